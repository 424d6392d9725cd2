"""Load the TorchScript model with its contract onto the worker's device and run it in micro-batches."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from handler.contract import CONTRACT_FILE, ContractError, PreprocessContract
from handler.options import ServeOptions

log = logging.getLogger(__name__)

_AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


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


@dataclass
class ModelRuntime:
    """A loaded model: ``forward`` maps ``[slow, fast]`` float views to (B, classes) float32 probabilities."""

    module: torch.jit.ScriptModule
    contract: PreprocessContract
    device: torch.device
    micro_batch: int
    autocast_dtype: Optional[torch.dtype]
    channels_last: bool

    @classmethod
    def load(cls, path: Path, device: torch.device, options: ServeOptions) -> "ModelRuntime":
        extra = {CONTRACT_FILE: ""}
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
        if not extra[CONTRACT_FILE]:
            raise ContractError(f"{path.name} carries no {CONTRACT_FILE}: export it with `python -m export`")
        contract = PreprocessContract.from_json(extra[CONTRACT_FILE])
        module.eval()
        is_cuda = device.type == "cuda"
        autocast_dtype = None
        if options.precision != "fp32":
            if is_cuda:
                autocast_dtype = _AUTOCAST_DTYPES[options.precision]
            else:
                # bf16/fp16 on this class of CPU runs ~100x slower than fp32: never on CPU.
                log.warning("precision=%s applies to GPU workers only; this CPU worker runs fp32", options.precision)
        if is_cuda:
            torch.backends.cudnn.benchmark = True
            module = module.to(memory_format=torch.channels_last_3d)
        if options.optimize:
            # Freezing folds BN into convs and inlines weights for *this* device; the file on
            # disk stays device-neutral.
            module = torch.jit.optimize_for_inference(torch.jit.freeze(module))
        runtime = cls(
            module=module,
            contract=contract,
            device=device,
            micro_batch=options.micro_batch_cuda if is_cuda else options.micro_batch_cpu,
            autocast_dtype=autocast_dtype,
            channels_last=is_cuda,
        )
        if options.warmup:
            started = time.monotonic()
            crop = contract.crop_size
            fast = torch.zeros(1, 3, contract.num_frames, crop, crop, device=device)
            runtime.probabilities([fast[:, :, :: contract.alpha], fast])
            log.info("warm-up forward on %s took %.2f s", device, time.monotonic() - started)
        return runtime

    def probabilities(self, pathways: list) -> torch.Tensor:
        """Softmax over classes for ``[slow (B,3,T/a,H,W), fast (B,3,T,H,W)]``; (B, classes) float32 on CPU."""
        if self.channels_last:
            pathways = [p.contiguous(memory_format=torch.channels_last_3d) for p in pathways]
        autocast = (
            torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            logits = self.module(pathways)
        return torch.softmax(logits.float(), dim=1).cpu()
