"""Make pytorchvideo's SlowFast scriptable without copying its source.

``torch.jit.script`` fails on pytorchvideo's SlowFast for three reasons: numpy integers in conv and
pool attributes, ModuleList indexing by a loop variable (``MultiPathWayWithFuse``,
``PoolConcatPathway``) and a plain-function attribute (``ResBlock.branch_fusion``). The adapters
below take over the *same* child modules (so parameters, buffers and state-dict keys are
unchanged) and replace only the forward logic, in a form TorchScript accepts. They also never
mutate the caller's input list, which pytorchvideo's ``inplace=True`` pathway blocks do.
"""

from __future__ import annotations

import copy
from typing import List, Tuple

import numpy as np
import torch
from pytorchvideo.models.head import ResNetBasicHead
from pytorchvideo.models.net import MultiPathWayWithFuse, Net
from pytorchvideo.models.resnet import ResBlock
from pytorchvideo.models.slowfast import FuseFastToSlow, PoolConcatPathway
from torch import nn

_INT_TUPLE_ATTRIBUTES = ("kernel_size", "stride", "padding", "dilation", "output_padding")


class ScriptabilityError(RuntimeError):
    """The network has a part the adapters do not know how to convert faithfully."""


def _adopt_children(target: nn.Module, source: nn.Module) -> None:
    """Register ``source``'s children on ``target`` under the same names (keys stay identical)."""
    for name, child in source.named_children():
        target.add_module(name, child)


class ScriptableResBlock(nn.Module):
    """``ResBlock`` with its residual sum written inline instead of a function attribute."""

    def __init__(self, original: ResBlock) -> None:
        super().__init__()
        self.branch1_conv = original.branch1_conv
        self.branch1_norm = original.branch1_norm
        self.branch2 = original.branch2
        self.activation = original.activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.branch1_conv is None:
            out = x + self.branch2(x)
        else:
            shortcut = self.branch1_conv(x)
            if self.branch1_norm is not None:
                shortcut = self.branch1_norm(shortcut)
            out = shortcut + self.branch2(x)
        if self.activation is not None:
            out = self.activation(out)
        return out


class ScriptablePathwayStage(nn.Module):
    """``MultiPathWayWithFuse``: runs block i on pathway i, then the fusion; List -> List."""

    def __init__(self, original: MultiPathWayWithFuse) -> None:
        super().__init__()
        if any(block is None for block in original.multipathway_blocks):
            raise ScriptabilityError("pathway stages with a missing block are not supported")
        _adopt_children(self, original)

    def forward(self, pathways: List[torch.Tensor]) -> List[torch.Tensor]:
        outputs: List[torch.Tensor] = []
        for index, block in enumerate(self.multipathway_blocks):
            outputs.append(block(pathways[index]))
        fused = self.multipathway_fusion(outputs)
        return fused


class ScriptableFastToSlowFusion(nn.Module):
    """``FuseFastToSlow``: concatenates the (conv, norm, act) of the fast pathway onto the slow one."""

    def __init__(self, original: FuseFastToSlow) -> None:
        super().__init__()
        self.conv_fast_to_slow = original.conv_fast_to_slow
        self.norm = original.norm
        self.activation = original.activation

    def forward(self, pathways: List[torch.Tensor]) -> List[torch.Tensor]:
        fuse = self.conv_fast_to_slow(pathways[1])
        if self.norm is not None:
            fuse = self.norm(fuse)
        if self.activation is not None:
            fuse = self.activation(fuse)
        return [torch.cat([pathways[0], fuse], 1), pathways[1]]


class _IdentityFusion(nn.Module):
    """Scriptable stand-in for the ``nn.Identity`` fusion of the last stage (List -> List)."""

    def forward(self, pathways: List[torch.Tensor]) -> List[torch.Tensor]:
        return pathways


class ScriptablePoolConcat(nn.Module):
    """``PoolConcatPathway`` (retain_list=False, dim=1): pools each pathway and concatenates.

    Returns a one-element list so that every stage of the network maps List -> List.
    """

    def __init__(self, original: PoolConcatPathway) -> None:
        super().__init__()
        if original.retain_list or original.dim != 1 or original.pool is None:
            raise ScriptabilityError("only PoolConcatPathway(retain_list=False, dim=1) with pools is supported")
        _adopt_children(self, original)

    def forward(self, pathways: List[torch.Tensor]) -> List[torch.Tensor]:
        pooled: List[torch.Tensor] = []
        for index, pool in enumerate(self.pool):
            pooled.append(pool(pathways[index]))
        return [torch.cat(pooled, 1)]


class ScriptableHead(nn.Module):
    """``ResNetBasicHead`` on the single concatenated tensor: ``[(B,C,T,H,W)]`` -> ``[logits (B,K), embedding (B,C)]``.

    The embedding is the feature before dropout and projection, averaged by the head's own
    ``output_pool`` over the same positions it averages the projected logits over; both come
    from one pass. The head keeps the List -> List shape of every other stage.
    """

    def __init__(self, original: ResNetBasicHead) -> None:
        super().__init__()
        self.pool = original.pool
        self.dropout = original.dropout
        self.proj = original.proj
        self.activation = original.activation
        self.output_pool = original.output_pool
        if self.proj is None or self.output_pool is None:
            raise ScriptabilityError("the head needs a projection and an output pool")

    def forward(self, pathways: List[torch.Tensor]) -> List[torch.Tensor]:
        x = pathways[0]
        if self.pool is not None:
            x = self.pool(x)
        embedding = self.output_pool(x)
        if self.dropout is not None:
            x = self.dropout(x)
        x = self.proj(x.permute((0, 2, 3, 4, 1))).permute((0, 4, 1, 2, 3))
        if self.activation is not None:
            x = self.activation(x)
        x = self.output_pool(x)
        return [x.reshape(x.shape[0], -1), embedding.reshape(embedding.shape[0], -1)]


class ScriptableSlowFast(nn.Module):
    """The whole network: ``[slow (B,3,Ts,H,W), fast (B,3,Tf,H,W)]`` float -> (B, classes) logits.

    ``forward_with_embedding`` returns the logits and the head's pooled input feature
    (B, 2304 for R50: 2048 slow + 256 fast channels) from the same pass.
    """

    def __init__(self, original: Net) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([_adapt_stage(block) for block in original.blocks])
        if not isinstance(self.blocks[-1], ScriptableHead):
            raise ScriptabilityError("the last block must be the ResNetBasicHead")

    def forward(self, pathways: List[torch.Tensor]) -> torch.Tensor:
        return self.forward_with_embedding(pathways)[0]

    @torch.jit.export
    def forward_with_embedding(self, pathways: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """``[slow, fast]`` float32 -> (logits (B, classes) float32, embedding (B, features) float32)."""
        # A fresh list: the caller's list is never modified.
        x: List[torch.Tensor] = [pathways[0], pathways[1]]
        for block in self.blocks:
            x = block(x)
        return x[0], x[1]


def _adapt_stage(block: nn.Module) -> nn.Module:
    if isinstance(block, MultiPathWayWithFuse):
        fusion = block.multipathway_fusion
        if isinstance(fusion, nn.Identity):
            block.multipathway_fusion = _IdentityFusion()
        elif isinstance(fusion, FuseFastToSlow):
            block.multipathway_fusion = ScriptableFastToSlowFusion(fusion)
        else:
            raise ScriptabilityError(f"no scriptable adapter for fusion {type(fusion).__name__}")
        return ScriptablePathwayStage(block)
    if isinstance(block, PoolConcatPathway):
        return ScriptablePoolConcat(block)
    if isinstance(block, ResNetBasicHead):
        return ScriptableHead(block)
    raise ScriptabilityError(f"no scriptable adapter for {type(block).__name__}")


def _check_residual_fusion(block: ResBlock) -> None:
    """The inline ``a + b`` must equal the block's own fusion function, or adapting changes math."""
    probe_a, probe_b = torch.randn(2, 3), torch.randn(2, 3)
    if not torch.equal(block.branch_fusion(probe_a, probe_b), probe_a + probe_b):
        raise ScriptabilityError("ResBlock.branch_fusion is not a plain sum; cannot inline it")


def _python_int_attributes(module: nn.Module) -> None:
    """Replace numpy integers in conv/pool attributes with Python ints (TorchScript needs them)."""
    for sub in module.modules():
        for name in _INT_TUPLE_ATTRIBUTES:
            value = getattr(sub, name, None)
            if isinstance(value, (tuple, list)) and any(isinstance(v, np.integer) for v in value):
                setattr(sub, name, tuple(int(v) for v in value))
            elif isinstance(value, np.integer):
                setattr(sub, name, int(value))


def _replace_res_blocks(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, ResBlock):
            _check_residual_fusion(child)
            _replace_res_blocks(child)
            setattr(module, name, ScriptableResBlock(child))
        else:
            _replace_res_blocks(child)


def script_slowfast(model: Net) -> torch.jit.ScriptModule:
    """Script a pytorchvideo SlowFast ``Net`` (in eval mode) without touching the original.

    Args:
        model: pytorchvideo ``Net`` as built by ``create_slowfast``; it is deep-copied.
    Returns:
        A ScriptModule with identical state-dict keys and values, mapping
        ``[slow (B,3,T/alpha,H,W) float32, fast (B,3,T,H,W) float32]`` to ``(B, classes)`` logits.
    """
    adapted = copy.deepcopy(model).eval()
    _python_int_attributes(adapted)
    _replace_res_blocks(adapted)
    wrapper = ScriptableSlowFast(adapted).eval()
    original_keys = list(model.state_dict().keys())
    if list(wrapper.state_dict().keys()) != original_keys:
        raise ScriptabilityError("adapting changed the state-dict keys")
    return torch.jit.script(wrapper)
