"""The TorchScript runtime: the exported .pt on the worker's device (GPU workers, or CPU by choice)."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager, List, Optional

import torch

from handler.contract import PreprocessContract
from handler.serve_settings import ServeOptions
from handler.runtime_base import EMBEDDING_METHOD, Outputs, dummy_pathways, model_outputs, read_model

log = logging.getLogger(__name__)

_AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def autocast_dtype_for(device: torch.device, precision: str) -> Optional[torch.dtype]:
    """The autocast dtype of ``precision`` (fp16/bf16) on a GPU; None for fp32 and on the CPU, where
    a reduced ``precision`` is refused with a warning. Shared by every TorchScript network a worker
    runs (the classifier, the action detector)."""
    if precision == "fp32":
        return None
    if device.type != "cuda":
        # torch's bf16/fp16 on this class of CPU runs ~100x slower than fp32: never on CPU.
        log.warning("precision=%s applies to GPU workers only; this CPU worker runs fp32", precision)
        return None
    return _AUTOCAST_DTYPES[precision]


def autocast(device: torch.device, dtype: Optional[torch.dtype]) -> ContextManager[Any]:
    """``torch.autocast`` on ``device`` at ``dtype`` (from ``autocast_dtype_for``), or nothing for None."""
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def torchscript_name(device: torch.device, precision: str) -> str:
    """What answers call a TorchScript network on ``device``: ``torchscript-cuda-{precision}`` on a
    GPU, ``torchscript-fp32`` on the CPU (which never runs a reduced precision in torch)."""
    return f"torchscript-cuda-{precision}" if device.type == "cuda" else "torchscript-fp32"


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
            autocast_dtype=autocast_dtype_for(device, options.precision),
            channels_last=is_cuda,
            name=torchscript_name(device, options.precision),
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
        with torch.inference_mode(), autocast(self.device, self.autocast_dtype):
            logits, embeddings = self.module.forward_with_embedding(pathways)
        return model_outputs(logits, embeddings, self.contract.activation)
