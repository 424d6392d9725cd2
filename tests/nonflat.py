"""A SlowFast R50 whose answers are not flat, exported to a .pt like `make export` writes.

Random weights give near-uniform probabilities (every class ~1/400) and features that differ
little between clips: a runtime that computes them badly still passes a comparison. This
checkpoint perturbs the BatchNorm statistics (per-channel scale and shift of every layer's
output) and scales the projection, so the probabilities of real clips are peaked and differ
from clip to clip.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from export.build import build_slowfast_r50
from export.reference import slowfast_r50_contract
from export.save import save_with_contract
from export.scriptable import script_slowfast

PROJECTION_SCALE = 40.0


def nonflat_slowfast(seed: int = 0) -> torch.nn.Module:
    """The eager network (eval mode) with perturbed BN running stats and a scaled projection."""
    model = build_slowfast_r50(seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                channels = module.running_var.shape
                module.running_var.mul_(torch.empty(channels).uniform_(0.5, 2.0, generator=generator))
                module.running_mean.add_(0.1 * torch.randn(channels, generator=generator))
        projection = model.blocks[-1].proj
        projection.weight.mul_(PROJECTION_SCALE)
        projection.bias.copy_(0.5 * torch.randn(projection.bias.shape, generator=generator))
    return model.eval()


def export_nonflat(output: Path, seed: int = 0) -> Path:
    """Script the non-flat network and save it with its contract (export's own steps; its
    scripted == eager verification is test_export's job)."""
    contract = dataclasses.replace(slowfast_r50_contract(), weights=f"non-flat test checkpoint (seed {seed})")
    save_with_contract(script_slowfast(nonflat_slowfast(seed)), contract, output)
    return output
