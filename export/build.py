"""Build SlowFast R50 exactly as ``pytorchvideo.models.hub.slowfast_r50`` does."""

from __future__ import annotations

from typing import Optional

import torch
from pytorchvideo.models.hub import slowfast_r50
from pytorchvideo.models.net import Net

from export.checkpoint import load_strict, read_state_dict


def build_slowfast_r50(checkpoint: Optional[str] = None, seed: int = 0) -> Net:
    """The eager pytorchvideo network in eval mode.

    Without a checkpoint the weights are pytorchvideo's own initialization under ``seed``:
    reproducible, and meaningless as predictions. With one, weights load strictly.
    """
    torch.manual_seed(seed)
    # The hub builder (fusion kernel (7,1,1), 400 classes) is what the model-zoo checkpoint fits.
    model = slowfast_r50(pretrained=False)
    if checkpoint:
        load_strict(model, read_state_dict(checkpoint), checkpoint)
    return model.eval()
