"""Build a SlowFast variant exactly as its ``pytorchvideo.models.hub`` builder does, with weights."""

from __future__ import annotations

from typing import Mapping, Optional

import torch
from pytorchvideo.models.net import Net

from export.checkpoint import load_strict, read_state_dict
from export.variants import DEFAULT_VARIANT, Variant, build, get_variant, head_classes


def build_variant(variant: Variant, state_dict: Optional[Mapping[str, torch.Tensor]] = None,
                  source: str = "", seed: int = 0, num_classes: int = 400) -> Net:
    """The eager network in eval mode: ``state_dict`` loaded strictly (its head decides the class
    count), or pytorchvideo's own initialization under ``seed`` with ``num_classes`` outputs."""
    classes = head_classes(state_dict) if state_dict is not None else num_classes
    model = build(variant, classes, seed=seed)
    if state_dict is not None:
        load_strict(model, state_dict, source, what=f"{variant.name} ({classes} classes)")
    return model.eval()


def build_default(checkpoint: Optional[str] = None, seed: int = 0) -> Net:
    """The default variant, from a checkpoint path/URL or seeded random weights (tests, bench)."""
    variant = get_variant(DEFAULT_VARIANT)
    if checkpoint:
        return build_variant(variant, read_state_dict(checkpoint), checkpoint)
    return build_variant(variant, seed=seed)
