"""What every runtime shares: the ``Runtime`` interface, the model file, a forward's outputs, threads.

Both runtimes (``runtime_torchscript``, ``runtime_openvino``) read the same exported .pt with
``read_model`` and turn the scripted module's (logits, embedding) into ``Outputs`` with
``model_outputs``; ``runtime.load_runtime`` chooses between them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import List, Optional, Protocol, Tuple

import torch

from handler.contract import CONTRACT_FILE, ContractError, PreprocessContract, activate
from handler.serve_settings import ServeOptions

# The scripted module's exported method returning (logits, embedding) from one pass.
EMBEDDING_METHOD = "forward_with_embedding"


class RuntimeUnavailable(RuntimeError):
    """Raised by a runtime's ``infer`` while it cannot run for a while (e.g. reloading its model):
    the request is answered 503, which the clients retry (handler/failures.py)."""


@dataclass(frozen=True)
class Outputs:
    """What one forward gives, one row per view, float32 on CPU; read by field name, never by
    position, so an output added here reaches every stage without changing them.

    ``logits``: (B, classes), the classifier's raw scores; ``probabilities``: (B, classes), the
    contract's activation of the logits (softmax, or a per-class sigmoid for multi-label models);
    ``embedding``: (B, D), the pooled SlowFast feature. A single view's, window's or video's
    outputs drop the batch dimension.
    """

    logits: torch.Tensor
    probabilities: torch.Tensor
    embedding: torch.Tensor

    def row(self, index: int) -> "Outputs":
        """View ``index`` of a batch: each output (N,), copied out of the batch's tensors."""
        return Outputs(**{f.name: getattr(self, f.name)[index].clone() for f in fields(self)})


def model_outputs(logits: torch.Tensor, embeddings: torch.Tensor, activation: str) -> Outputs:
    """``Outputs`` from the scripted module's ``(logits (B, classes), embedding (B, D))``.

    ``activation``: the contract's (softmax or sigmoid). Everything is float32, and the activation
    runs in float32, even when the forward ran in fp16/bf16."""
    logits = logits.float()
    return Outputs(logits=logits.cpu(), probabilities=activate(logits, activation).cpu(),
                   embedding=embeddings.float().cpu())


class Runtime(Protocol):
    """A loaded model: ``infer`` maps ``[slow (B,3,T/a,c,c), fast (B,3,T,c,c)]`` float32 views to
    ``Outputs``; ``micro_batch`` views per forward; ``name`` says what runs (e.g. ``openvino-fp32``).
    ``infer`` raises ``RuntimeUnavailable`` while it cannot run for a while; any other exception is
    a failure of that forward (handler/failures.py tells which are answered 503 and which 500)."""

    contract: PreprocessContract
    micro_batch: int
    name: str

    def infer(self, pathways: List[torch.Tensor]) -> Outputs: ...


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


# The device of CPU workers, and where every network falls back to.
CPU = torch.device("cpu")


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``: the same tensor, untouched, where it is there already (the CPU's on
    a CPU worker); from the CPU to a GPU through pinned memory without blocking (the copy overlaps
    the host's work until a kernel needs it)."""
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def dummy_pathways(contract: PreprocessContract, device: torch.device = torch.device("cpu"), batch: int = 1) -> List[torch.Tensor]:
    """Zero ``[slow (B,3,T/a,c,c), fast (B,3,T,c,c)]`` float32 input for warm-up and conversion."""
    crop = contract.crop_size
    fast = torch.zeros(batch, 3, contract.num_frames, crop, crop, device=device)
    return [fast[:, :, :: contract.alpha].contiguous(), fast]
