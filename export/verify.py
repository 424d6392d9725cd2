"""Check a scripted SlowFast against the eager pytorchvideo model it came from."""

from __future__ import annotations

import logging
from typing import Callable, Dict, Iterable, List, Tuple

import torch

from handler.contract import PreprocessContract

log = logging.getLogger(__name__)

DEFAULT_CASES: Tuple[Tuple[int, int], ...] = ((1, 224), (3, 224), (1, 256), (3, 256))
TOLERANCE = 1e-4


class VerificationError(RuntimeError):
    """Scripted and eager outputs differ beyond the tolerance."""


def make_inputs(contract: PreprocessContract, batch: int, crop: int, seed: int) -> List[torch.Tensor]:
    """Random ``[slow (B,3,T/alpha,crop,crop), fast (B,3,T,crop,crop)]`` float32 inputs."""
    generator = torch.Generator().manual_seed(seed)
    fast = torch.randn(batch, 3, contract.num_frames, crop, crop, generator=generator)
    slow = fast[:, :, :: contract.alpha].contiguous()
    return [slow, fast]


Outputs = Tuple[torch.Tensor, torch.Tensor]


def eager_embedding_hook(eager: torch.nn.Module) -> Tuple[List[torch.Tensor], Callable[[], None]]:
    """Capture the eager head's pooled input feature on every forward.

    A forward pre-hook on ``head.dropout`` sees the head's input after ``head.pool`` and before
    dropout and projection; the head's own ``output_pool`` then averages it over the positions it
    averages the logits over. Returns (list the (B, C) features are appended to, remove function).
    """
    head = eager.blocks[-1]
    if getattr(head, "dropout", None) is None or getattr(head, "output_pool", None) is None:
        raise VerificationError("the eager head has no dropout/output_pool to take the embedding at")
    captured: List[torch.Tensor] = []

    def hook(_module: torch.nn.Module, args: Tuple[torch.Tensor, ...]) -> None:
        captured.append(head.output_pool(args[0]).flatten(1))

    handle = head.dropout.register_forward_pre_hook(hook)
    return captured, handle.remove


def reference_outputs(
    eager: torch.nn.Module, contract: PreprocessContract, cases: Iterable[Tuple[int, int]] = DEFAULT_CASES
) -> Dict[Tuple[int, int], Outputs]:
    """Eager (logits (B, classes), embedding (B, embedding_size)) for each (batch, crop) case.

    Inputs are seeded by the case; the embedding comes from the eager model's own head
    (``eager_embedding_hook``), not from a re-implementation.
    """
    outputs = {}
    captured, remove = eager_embedding_hook(eager)
    try:
        with torch.inference_mode():
            for batch, crop in cases:
                captured.clear()
                # pytorchvideo's pathway blocks write into the list they are given: pass a copy.
                logits = eager(list(make_inputs(contract, batch, crop, seed=batch * 1000 + crop)))
                outputs[(batch, crop)] = (logits, captured[-1])
    finally:
        remove()
    return outputs


def _compare(label: str, what: str, got: torch.Tensor, reference: torch.Tensor, shape: Tuple[int, int],
             case: Tuple[int, int], tolerance: float) -> float:
    batch, crop = case
    if tuple(got.shape) != shape:
        raise VerificationError(f"{label}: {what} shape {tuple(got.shape)}, expected {shape} at batch {batch}, crop {crop}")
    diff = float((got - reference).abs().max())
    log.info("%s %s batch=%d crop=%d max|diff|=%.3g", label, what, batch, crop, diff)
    if not diff <= tolerance:
        raise VerificationError(
            f"{label}: {what} max |scripted - eager| = {diff:.3g} > {tolerance:g} at batch {batch}, crop {crop}"
        )
    return diff


def check_against(
    candidate: torch.jit.ScriptModule,
    expected: Dict[Tuple[int, int], Outputs],
    contract: PreprocessContract,
    label: str,
    tolerance: float = TOLERANCE,
) -> float:
    """Largest |difference| of logits (``forward`` and ``forward_with_embedding``) and embeddings
    over all cases; raises VerificationError above ``tolerance``."""
    worst = 0.0
    with torch.inference_mode():
        for index, (case, (ref_logits, ref_embedding)) in enumerate(expected.items()):
            batch, crop = case
            inputs = make_inputs(contract, batch, crop, seed=batch * 1000 + crop)
            logits, embedding = candidate.forward_with_embedding(inputs)
            classes, features = (batch, contract.num_classes), (batch, contract.embedding_size)
            worst = max(
                worst,
                _compare(label, "logits", logits, ref_logits, classes, case, tolerance),
                _compare(label, "embedding", embedding, ref_embedding, features, case, tolerance),
            )
            if index == 0:
                # ``forward`` is ``forward_with_embedding(...)[0]`` in the scripted code: one case
                # proves the wiring without doubling the export time.
                worst = max(worst, _compare(label, "forward logits", candidate(inputs), ref_logits, classes, case, tolerance))
    return worst
