"""Load the TorchScript model with its contract onto the worker's device and run it in micro-batches."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from handler.contract import CONTRACT_FILE, ContractError, PreprocessContract, activate
from handler.options import ServeOptions

log = logging.getLogger(__name__)

_AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
# The scripted module's exported method returning (logits, embedding) from one pass.
EMBEDDING_METHOD = "forward_with_embedding"


def choose_device(gpu_id: Optional[int], cuda_available: Optional[bool] = None) -> torch.device:
    """``cuda:{gpu_id}`` when TorchServe gave this worker a GPU and CUDA works, else CPU."""
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if gpu_id is not None and available:
        return torch.device(f"cuda:{int(gpu_id)}")
    return torch.device("cpu")


def usable_cores() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 quota (Kubernetes CPU limits).

    ``os.cpu_count()`` reports the node's cores, which oversubscribes a pod with a CPU limit.
    """
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, count)


def cpu_thread_count(options: ServeOptions, workers: int, cores: Optional[int] = None) -> int:
    """Intra-op threads for a CPU worker: explicit, or the cores shared by the configured workers."""
    if options.cpu_threads:
        return options.cpu_threads
    cores = cores or usable_cores()
    return max(1, cores // max(1, workers))


def read_model(path: Path, device: torch.device) -> Tuple[torch.jit.ScriptModule, PreprocessContract]:
    """The scripted module (eval mode, on ``device``) and the contract stored beside it in ``path``."""
    extra = {CONTRACT_FILE: ""}
    module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    if not extra[CONTRACT_FILE]:
        raise ContractError(f"{path.name} carries no {CONTRACT_FILE}: export it with `python -m export`")
    contract = PreprocessContract.from_json(extra[CONTRACT_FILE])
    if not hasattr(module, EMBEDDING_METHOD):
        raise ContractError(f"{path.name} has no {EMBEDDING_METHOD} method: re-export it with `make export`")
    return module.eval(), contract


def dummy_pathways(contract: PreprocessContract, device: torch.device = torch.device("cpu"), batch: int = 1) -> List[torch.Tensor]:
    """Zero ``[slow (B,3,T/a,c,c), fast (B,3,T,c,c)]`` float32 input for warm-up and conversion."""
    crop = contract.crop_size
    fast = torch.zeros(batch, 3, contract.num_frames, crop, crop, device=device)
    return [fast[:, :, :: contract.alpha].contiguous(), fast]


@dataclass
class ModelRuntime:
    """TorchScript runtime: ``infer`` maps ``[slow, fast]`` float views to (probabilities, embeddings).

    ``ModelRuntime.load`` is the one entry point for every backend (see ``load``).
    """

    module: torch.jit.ScriptModule
    contract: PreprocessContract
    device: torch.device
    micro_batch: int
    autocast_dtype: Optional[torch.dtype]
    channels_last: bool
    name: str = "torchscript-fp32"

    @classmethod
    def load(cls, path: Path, device: torch.device, options: ServeOptions, workers: int = 1) -> "ModelRuntime":
        """Load the scripted model for ``device``, optimized, warmed up (``options.warmup``).

        ``workers``: workers sharing this host's cores (sizes the CPU thread pool). CPU workers
        with ``cpu_runtime: openvino`` get ``OpenVinoRuntime`` (same interface) unless OpenVINO
        cannot import, convert or compile the model: then TorchScript, with a warning.
        """
        if device.type == "cpu" and options.cpu_runtime == "openvino":
            try:
                from handler.runtime_openvino import OpenVinoRuntime

                return OpenVinoRuntime.load(path, options, workers)  # type: ignore[return-value]
            except ContractError:
                raise  # the .pt itself is wrong: TorchScript would refuse it too
            except Exception as exc:  # never a dead worker: the TorchScript path serves the same .pt
                log.warning(
                    "cpu_runtime openvino failed (%s: %s); falling back to TorchScript fp32",
                    type(exc).__name__, exc, exc_info=True,
                )
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

    def infer(self, pathways: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """``[slow (B,3,T/a,H,W), fast (B,3,T,H,W)]`` on the device -> (probabilities (B, classes),
        embeddings (B, embedding_size)), both float32 on CPU, from one forward."""
        if self.channels_last:
            pathways = [p.contiguous(memory_format=torch.channels_last_3d) for p in pathways]
        autocast = (
            torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            logits, embeddings = self.module.forward_with_embedding(pathways)
        # The contract's activation (softmax or sigmoid), in float32 even under fp16 autocast.
        return activate(logits, self.contract.activation).cpu(), embeddings.float().cpu()

    def probabilities(self, pathways: List[torch.Tensor]) -> torch.Tensor:
        """Softmax over classes only: (B, classes) float32 on CPU (``infer``'s first output)."""
        return self.infer(pathways)[0]
