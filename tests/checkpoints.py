"""SlowFast checkpoints whose answers depend on the input, for tests that judge answers.

Two, for two questions:
- ``export_perturbed``: BN statistics perturbed and the projection scaled (the recipe of issue 10):
  peaked, clip-dependent probabilities with a trained network's numerics (no cancellation), for
  comparing runtimes and precisions (tests/test_runtime_fidelity.py);
- ``export_non_flat``: BN recalibrated on real clips, for judging what embeddings mean.

No machine here reaches the model zoo, and pytorchvideo's random initialization answers every
input alike: nearly flat or saturated probabilities, features dominated by one common direction
(cosine ~0.998 between any two clips). Errors in preprocessing or in a runtime hide in that.
The calibrated checkpoint recalibrates every BatchNorm's statistics on real clips (so each channel varies
with the input instead of drifting in scale through 50 layers), centres the projection on the
clips' mean feature and scales it so the logits spread over a few units: top-1 probabilities
well below 1 that differ from clip to clip, and features whose cosine tells clips apart. Its
logits are small differences of large features, so low precisions lose more on it than on a
trained network: bf16 moves its probabilities by up to 0.02 where the perturbed one moves 0.0005.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import torch

from harness.paths import MODEL

# Real clips the statistics are taken from (tests judging answers should use others).
CALIBRATION_CLIPS = ("mb__trim-buck-bunny.webm", "ii__realshort.mp4", "tv__RATRACE_wave_f_nm_np1_fr_goo_37.avi")
PROJECTION_SCALE = 40.0  # the perturbed checkpoint's: top-1 ~0.06 on real clips (uniform: 0.0025)
LOGIT_SPREAD = 0.6  # typical std of a clip's logits over classes: top-1 probabilities ~0.2-0.8
# The file export_non_flat writes: named as `make mar` names the default model's.
NON_FLAT_PT = f"{MODEL}.pt"


def calibration_pathways(videos: Path) -> List[List[torch.Tensor]]:
    """``[slow (1,3,8,256,256), fast (1,3,32,256,256)]`` float32 per calibration clip (reference pipeline)."""
    from harness.reference import reference_pathways

    out = []
    for name in CALIBRATION_CLIPS:
        slow, fast = reference_pathways(str(videos / name), (0.0, 64 / 30))
        out.append([slow[None], fast[None]])
    return out


def _batchnorms_to_calibrate(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Every BatchNorm3d: scale drawn in 0.8..1.2, no shift, statistics reset to a cumulative average
    over the forwards that follow (train mode); the model's other modules stay as they are."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            # pytorchvideo zero-initializes each block's last BN scale: residual branches then add nothing.
            module.weight.copy_(torch.empty(module.weight.shape).uniform_(0.8, 1.2, generator=generator))
            module.bias.zero_()
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration clips
            module.train()


def write_non_flat_checkpoint(path: Path, calibration: Sequence[List[torch.Tensor]], seed: int = 7) -> Path:
    """Save a model-zoo layout state dict (``{"model_state": ...}``) of the default variant to ``path``."""
    from export.build import build_default

    model = build_default(None, seed=seed)
    with torch.no_grad():
        _batchnorms_to_calibrate(model, torch.Generator().manual_seed(seed))
        for pathways in calibration:
            model([p.clone() for p in pathways])  # the model rewrites its input list in place
        model.eval()
        head = model.blocks[-1]
        features = []
        hook = head.dropout.register_forward_pre_hook(lambda _m, inputs: features.append(inputs[0]))
        for pathways in calibration:
            model([p.clone() for p in pathways])
        hook.remove()
        feature = torch.cat([f.reshape(f.shape[0], f.shape[1], -1).mean(-1) for f in features])  # (N, embedding size)
        weight = head.proj.weight  # (classes, embedding size)
        # A clip's logits are W (f - mean); f varies by about the calibration clips' spread.
        spread = (weight.pow(2) @ feature.var(0)).sqrt().mean()
        scale = LOGIT_SPREAD / float(spread)
        head.proj.bias.copy_(-scale * (weight @ feature.mean(0)))
        weight.mul_(scale)
    torch.save({"model_state": model.state_dict()}, path)
    return path


def export_non_flat(directory: Path, videos: Path) -> Path:
    """Script and save the non-flat checkpoint as ``python -m export`` does; returns the ``.pt``.

    The exporter's parity checks (eager vs scripted, several batch sizes) are skipped: they are
    tests/test_export.py's job and take most of an export's time."""
    import dataclasses

    from export.build import build_default
    from export.checkpoint import weights_origin
    from export.reference import default_contract
    from export.save import save_with_contract
    from export.scriptable import script_slowfast

    checkpoint = str(write_non_flat_checkpoint(directory / "non_flat.pyth", calibration_pathways(videos)))
    contract = dataclasses.replace(default_contract(), weights=weights_origin(checkpoint, 0))
    output = directory / NON_FLAT_PT
    save_with_contract(script_slowfast(build_default(checkpoint)), contract, output)
    return output


def perturbed_slowfast(seed: int = 0, variant: Optional[str] = None) -> torch.nn.Module:
    """The eager network of ``variant`` (a classifier of export/variants.py; None: the default;
    eval mode) with perturbed BN running stats and a scaled projection."""
    from export.build import build_variant
    from export.variants import DEFAULT_VARIANT, get_variant

    model = build_variant(get_variant(variant or DEFAULT_VARIANT), seed=seed)
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


def export_perturbed(output: Path, seed: int = 0, variant: Optional[str] = None) -> Path:
    """Script the perturbed network of ``variant`` (None: the default) and save it with its
    contract (export's own steps)."""
    from export.save import save_with_contract
    from export.scriptable import script_slowfast
    from export.variants import DEFAULT_VARIANT, contract_for, get_variant, read_label_file

    chosen = get_variant(variant or DEFAULT_VARIANT)
    contract = contract_for(chosen, read_label_file(chosen.labels_file), weights=f"perturbed test checkpoint (seed {seed})")
    save_with_contract(script_slowfast(perturbed_slowfast(seed, variant)), contract, output)
    return output


# -- the action detector (issue 27) --------------------------------------------------------------

DETECTION_VARIANT = "slowfast_r50_detection"


def detection_calibration(videos: Path, clips: Sequence[str] = CALIBRATION_CLIPS[:1]) -> List[tuple]:
    """``([slow, fast], rois (N,5))`` per calibration clip: its first second's keyframe (0.5 s), the
    whole frame and its two halves as boxes, through the tutorial's pipeline (harness/reference.py)."""
    from harness.reference import ava_reference_input

    out = []
    for name in clips:
        data = (videos / name).read_bytes()
        import av

        with av.open(str(videos / name)) as container:
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
        boxes = [[0, 0, width, height], [0, 0, width / 2, height], [width / 2, 0, width, height]]
        out.append(ava_reference_input(data, 0.5, boxes))
    return out


def write_non_flat_detection_checkpoint(path: Path, calibration: Sequence[tuple], seed: int = 11) -> Path:
    """A model-zoo layout (``{"model_state": ...}``) action detector whose per-box probabilities
    differ from box to box and clip to clip: BN recalibrated on real clips, the projection centred on
    the boxes' mean RoI feature and scaled to spread the logits over a few units (as ``write_non_flat_checkpoint``)."""
    from export.build import build_variant
    from export.variants import get_variant

    model = build_variant(get_variant(DETECTION_VARIANT), seed=seed, num_classes=80)
    with torch.no_grad():
        _batchnorms_to_calibrate(model, torch.Generator().manual_seed(seed))  # only the BNs train: no dropout
        for pathways, rois in calibration:
            model([p.clone() for p in pathways], rois)
        model.eval()
        head = model.detection_head
        features: List[torch.Tensor] = []
        hook = head.dropout.register_forward_pre_hook(lambda _m, inputs: features.append(inputs[0].flatten(1)))
        for pathways, rois in calibration:
            model([p.clone() for p in pathways], rois)
        hook.remove()
        feature = torch.cat(features)  # (boxes, 2304)
        weight = head.proj.weight
        spread = (weight.pow(2) @ feature.var(0)).sqrt().mean()
        scale = 3 * LOGIT_SPREAD / float(spread)
        head.proj.bias.copy_(-scale * (weight @ feature.mean(0)))
        weight.mul_(scale)
    torch.save({"model_state": model.state_dict()}, path)
    return path
