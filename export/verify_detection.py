"""Check a scripted action detector against the eager pytorchvideo ``DetectionBBoxNetwork`` it came from.

The eager network ends in a sigmoid; the scripted one returns the logits before it. Both are
compared: the logits with the eager head's own pre-sigmoid values (a hook on its activation), the
probabilities as the eager forward returns them, and the per-box feature with the eager head's
dropout input.
"""

from __future__ import annotations

import logging
from typing import Dict, List, Tuple

import torch

from export.verify import TOLERANCE, VerificationError
from handler.contract import PreprocessContract

log = logging.getLogger(__name__)

# (views, height, width, boxes): one view and a batch of two landscape views sharing boxes.
DETECTION_CASES: Tuple[Tuple[int, int, int, int], ...] = ((1, 256, 256, 3), (2, 256, 320, 5))

Expected = Dict[Tuple[int, int, int, int], Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def make_detection_inputs(contract: PreprocessContract, case: Tuple[int, int, int, int]) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """Seeded ``[slow, fast]`` float32 views and (N, 5) boxes ``(view, x1, y1, x2, y2)`` inside them."""
    views, height, width, count = case
    generator = torch.Generator().manual_seed(views * 1000 + width + count)
    fast = torch.randn(views, 3, contract.num_frames, height, width, generator=generator)
    slow = fast[:, :, :: contract.alpha].contiguous()
    corners = torch.rand(count, 2, 2, generator=generator) * torch.tensor([width, height])
    low, high = corners.amin(1), corners.amax(1) + 8  # at least 8 px wide and tall
    index = torch.arange(count, dtype=torch.float32).remainder(views)[:, None]
    return [slow, fast], torch.cat([index, low, high.minimum(torch.tensor([width, height]))], 1)


def detection_reference(eager: torch.nn.Module, contract: PreprocessContract,
                        cases: Tuple[Tuple[int, int, int, int], ...] = DETECTION_CASES) -> Expected:
    """Eager (probabilities, logits, feature) per (views, height, width, boxes) case, read from the
    eager network's own head."""
    head = eager.detection_head
    captured: Dict[str, torch.Tensor] = {}
    hooks = [
        head.activation.register_forward_pre_hook(lambda _m, args: captured.__setitem__("logits", args[0].flatten(1))),
        head.dropout.register_forward_pre_hook(lambda _m, args: captured.__setitem__("feature", args[0].flatten(1))),
    ]
    expected: Expected = {}
    try:
        with torch.inference_mode():
            for case in cases:
                pathways, boxes = make_detection_inputs(contract, case)
                probabilities = eager(list(pathways), boxes)  # pytorchvideo rewrites the list it is given
                expected[case] = (probabilities, captured["logits"], captured["feature"])
    finally:
        for hook in hooks:
            hook.remove()
    return expected


def check_detector(candidate: torch.jit.ScriptModule, expected: Expected, contract: PreprocessContract,
                   label: str, tolerance: float = TOLERANCE) -> float:
    """Largest |difference| over the cases (logits, sigmoid probabilities, features); raises above ``tolerance``."""
    worst = 0.0
    with torch.inference_mode():
        for case, (probabilities, logits, feature) in expected.items():
            pathways, boxes = make_detection_inputs(contract, case)
            got_logits, got_feature = candidate.forward_with_embedding(pathways, boxes)
            plain = candidate(pathways, boxes)
            for what, got, want in (("logits", got_logits, logits), ("forward logits", plain, logits),
                                    ("probabilities", torch.sigmoid(got_logits), probabilities),
                                    ("feature", got_feature, feature)):
                if got.shape != want.shape:
                    raise VerificationError(f"{label}: {what} shape {tuple(got.shape)}, expected {tuple(want.shape)} for {case}")
                diff = float((got - want).abs().max())
                log.info("%s %s %s max|diff|=%.3g", label, what, case, diff)
                if not diff <= tolerance:
                    raise VerificationError(f"{label}: {what} max |scripted - eager| = {diff:.3g} > {tolerance:g} for {case}")
                worst = max(worst, diff)
    return worst
