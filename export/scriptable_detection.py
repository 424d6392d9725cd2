"""Make pytorchvideo's action detector (``slowfast_r50_detection``) scriptable without copying its source.

The detector is a ``DetectionBBoxNetwork``: a SlowFast ``Net`` whose last block pools each
pathway over time and concatenates them (``PoolConcatPathway``), then a ``ResNetRoIHead``
(torchvision's ``RoIAlign``, a 2D max pool, dropout, a linear projection, a sigmoid). The backbone
is adapted exactly as the classifier's (``export.scriptable``); the head is rewritten only to
return the logits *before* its sigmoid (the contract's activation applies it, as for the
classifier) and the per-box feature beside them. State-dict keys stay identical.
"""

from __future__ import annotations

import copy
from typing import List, Tuple

import torch
from pytorchvideo.models.head import ResNetRoIHead
from pytorchvideo.models.net import DetectionBBoxNetwork
from torch import nn
from torchvision.ops import RoIAlign

from export.scriptable import (
    ScriptabilityError, ScriptablePoolConcat, _adapt_stage, _python_int_attributes, _replace_res_blocks,
)


class ScriptableRoIHead(nn.Module):
    """``ResNetRoIHead`` without its activation: ``(features (B,C,1,H,W), boxes (N,5))`` ->
    ``(logits (N, classes), feature (N, C))``."""

    def __init__(self, original: ResNetRoIHead) -> None:
        super().__init__()
        if original.pool is not None or original.output_pool is not None or original.roi_layer is None:
            raise ScriptabilityError("only the RoI head without 3D pools (slowfast_r50_detection's) is supported")
        if original.activation is not None and not isinstance(original.activation, nn.Sigmoid):
            raise ScriptabilityError(f"the RoI head's activation is {type(original.activation).__name__}, not Sigmoid")
        roi = original.roi_layer
        if not isinstance(roi, RoIAlign):
            raise ScriptabilityError(f"the RoI layer is {type(roi).__name__}, not torchvision's RoIAlign")
        self.roi_layer = roi  # kept as the child it is (no parameters); its settings are read below
        self.output_size: Tuple[int, int] = (int(roi.output_size[0]), int(roi.output_size[1]))
        self.spatial_scale = float(roi.spatial_scale)
        self.sampling_ratio = int(roi.sampling_ratio)
        self.aligned = bool(roi.aligned)
        self.pool_spatial = original.pool_spatial
        self.dropout = original.dropout
        self.proj = original.proj

    def forward(self, x: torch.Tensor, boxes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if x.shape[-3] != 1:
            raise RuntimeError("the RoI head needs a time dimension of 1 (the pathways' pools give it)")
        # torchvision.ops.roi_align's own last call, on a (N, 5) tensor of boxes: the same kernel,
        # without the list-of-boxes branch (isinstance, unchecked casts) that converters cannot follow.
        x = torch.ops.torchvision.roi_align(torch.squeeze(x, -3), boxes, self.spatial_scale, self.output_size[0],
                                            self.output_size[1], self.sampling_ratio, self.aligned)
        if self.pool_spatial is not None:
            x = self.pool_spatial(x)
        x = x.unsqueeze(-3)
        feature = x.reshape(x.shape[0], -1)
        if self.dropout is not None:
            x = self.dropout(x)
        x = self.proj(x.permute((0, 2, 3, 4, 1))).permute((0, 4, 1, 2, 3))
        return x.reshape(x.shape[0], -1), feature


class ScriptableSlowFastDetector(nn.Module):
    """``([slow (B,3,T/a,H,W), fast (B,3,T,H,W)], boxes (N,5) float32)`` -> (N, classes) logits.

    ``boxes`` rows are ``(view index in B, x1, y1, x2, y2)`` in the frames' pixels.
    ``forward_with_embedding`` also returns each box's (N, 2304) RoI feature from the same pass.
    State-dict keys are the ``DetectionBBoxNetwork``'s (``model.blocks...``, ``detection_head...``).
    """

    def __init__(self, original: DetectionBBoxNetwork) -> None:
        super().__init__()
        self.model = _Backbone([_adapt_stage(block) for block in original.model.blocks])
        if not isinstance(self.model.blocks[-1], ScriptablePoolConcat):
            raise ScriptabilityError("the backbone's last block must be the PoolConcatPathway")
        self.detection_head = ScriptableRoIHead(original.detection_head)

    def forward(self, pathways: List[torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
        return self.forward_with_embedding(pathways, boxes)[0]

    @torch.jit.export
    def forward_with_embedding(self, pathways: List[torch.Tensor], boxes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``[slow, fast]`` float32, boxes (N,5) -> (logits (N, classes), RoI feature (N, 2304))."""
        return self.detection_head(self.model(pathways), boxes)


class _Backbone(nn.Module):
    """The adapted ``Net`` blocks under the key ``blocks``: ``[slow, fast]`` -> (B, C, 1, H, W)."""

    def __init__(self, blocks: List[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, pathways: List[torch.Tensor]) -> torch.Tensor:
        x: List[torch.Tensor] = [pathways[0], pathways[1]]  # a fresh list: the caller's is never modified
        for block in self.blocks:
            x = block(x)
        return x[0]


def script_detector(model: DetectionBBoxNetwork) -> torch.jit.ScriptModule:
    """Script a pytorchvideo ``DetectionBBoxNetwork`` (eval mode) without touching the original.

    Returns a ScriptModule with identical state-dict keys and values, mapping
    ``([slow, fast] float32, boxes (N,5) float32)`` to (N, classes) logits (before the sigmoid).
    """
    if not isinstance(model, DetectionBBoxNetwork):
        raise ScriptabilityError(f"expected a DetectionBBoxNetwork, got {type(model).__name__}")
    adapted = copy.deepcopy(model).eval()
    _python_int_attributes(adapted)
    _replace_res_blocks(adapted)
    wrapper = ScriptableSlowFastDetector(adapted).eval()
    if list(wrapper.state_dict().keys()) != list(model.state_dict().keys()):
        raise ScriptabilityError("adapting changed the state-dict keys")
    return torch.jit.script(wrapper)
