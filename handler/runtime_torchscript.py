"""The TorchScript runtime: the exported .pt on the worker's device (GPU workers, or CPU by choice)."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch

from handler.contract import PreprocessContract
from handler.serve_settings import ServeOptions
from handler.runtime_base import EMBEDDING_METHOD, Outputs, dummy_pathways, model_outputs, read_model

log = logging.getLogger(__name__)

_AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class TorchScriptRuntime:
    """``infer`` maps ``[slow, fast]`` float views on ``device`` to ``Outputs`` (a ``Runtime``)."""

    module: torch.jit.ScriptModule
    contract: PreprocessContract
    device: torch.device
    micro_batch: int
    autocast_dtype: Optional[torch.dtype]
    channels_last: bool
    name: str = "torchscript-fp32"

    @classmethod
    def load(cls, path: Path, device: torch.device, options: ServeOptions) -> "TorchScriptRuntime":
        """Load the scripted model for ``device``, optimized, warmed up (``options.warmup``)."""
        module, contract = read_model(path, device)
        is_cuda = device.type == "cuda"
        autocast_dtype = None
        if options.precision != "fp32":
            if is_cuda:
                autocast_dtype = _AUTOCAST_DTYPES[options.precision]
            else:
                # torch's bf16/fp16 on this class of CPU runs ~100x slower than fp32: never on CPU.
                log.warning("precision=%s applies to GPU workers only; this CPU worker runs fp32", options.precision)
        if is_cuda:
            torch.backends.cudnn.benchmark = True
            module = module.to(memory_format=torch.channels_last_3d)
        if options.optimize:
            # Freezing folds BN into convs and inlines weights for *this* device; the file on
            # disk stays device-neutral. Freezing drops methods not named: keep the joint one.
            module = torch.jit.optimize_for_inference(
                torch.jit.freeze(module, preserved_attrs=[EMBEDDING_METHOD]), other_methods=[EMBEDDING_METHOD]
            )
        runtime = cls(
            module=module,
            contract=contract,
            device=device,
            micro_batch=options.micro_batch_cuda if is_cuda else options.micro_batch_cpu,
            autocast_dtype=autocast_dtype,
            channels_last=is_cuda,
            name=f"torchscript-cuda-{options.precision}" if is_cuda else "torchscript-fp32",
        )
        if options.warmup:
            started = time.monotonic()
            runtime.infer(dummy_pathways(contract, device))
            log.info("warm-up forward (%s on %s) took %.2f s", runtime.name, device, time.monotonic() - started)
        return runtime

    def infer(self, pathways: List[torch.Tensor]) -> Outputs:
        """``[slow (B,3,T/a,H,W), fast (B,3,T,H,W)]`` on the device -> ``Outputs`` (float32 on CPU)
        from one forward."""
        if self.channels_last:
            pathways = [p.contiguous(memory_format=torch.channels_last_3d) for p in pathways]
        autocast = (
            torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            logits, embeddings = self.module.forward_with_embedding(pathways)
        return model_outputs(logits, embeddings, self.contract.activation)
