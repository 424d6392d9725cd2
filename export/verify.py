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


def reference_outputs(
    eager: torch.nn.Module, contract: PreprocessContract, cases: Iterable[Tuple[int, int]] = DEFAULT_CASES
) -> Dict[Tuple[int, int], torch.Tensor]:
    """Eager logits (B, classes) for each (batch, crop) case; inputs are seeded by the case."""
    outputs = {}
    with torch.inference_mode():
        for batch, crop in cases:
            # pytorchvideo's pathway blocks write into the list they are given: pass a copy.
            outputs[(batch, crop)] = eager(list(make_inputs(contract, batch, crop, seed=batch * 1000 + crop)))
    return outputs


def check_against(
    candidate: Callable[[List[torch.Tensor]], torch.Tensor],
    expected: Dict[Tuple[int, int], torch.Tensor],
    contract: PreprocessContract,
    label: str,
    tolerance: float = TOLERANCE,
) -> float:
    """Largest |difference| over all cases; raises VerificationError above ``tolerance``."""
    worst = 0.0
    with torch.inference_mode():
        for (batch, crop), reference in expected.items():
            inputs = make_inputs(contract, batch, crop, seed=batch * 1000 + crop)
            got = candidate(inputs)
            if tuple(got.shape) != (batch, contract.num_classes):
                raise VerificationError(f"{label}: output shape {tuple(got.shape)} for batch {batch}, crop {crop}")
            diff = float((got - reference).abs().max())
            log.info("%s batch=%d crop=%d max|diff|=%.3g", label, batch, crop, diff)
            worst = max(worst, diff)
            if not diff <= tolerance:
                raise VerificationError(
                    f"{label}: max |scripted - eager| = {diff:.3g} > {tolerance:g} at batch {batch}, crop {crop}"
                )
    return worst
