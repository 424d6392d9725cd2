"""The SlowFast family this service exports: one row per variant, the only place a variant is named.

A row holds the pytorchvideo hub builder, the preprocessing it was trained and evaluated with
(pytorchvideo's model zoo, Kinetics-400 at 30 fps), its model-zoo checkpoint and its labels.
Everything else in the tree reads the model's name, classes and embedding size from the contract
the exporter writes into the model file (handler/contract.py).

Sampling, from pytorchvideo's model zoo and hub code (``pytorchvideo/models/hub/slowfast.py``):
- ``slowfast_r50``, ``slowfast_r101`` (8x8): the fast pathway takes 32 frames at stride 2 (a
  64-frame window, 64/30 s), the slow pathway every 4th (alpha) of them: 8 frames at stride 8;
- ``slowfast_16x8_r101_50_50`` (16x8): 64 fast frames at stride 2 (a 128-frame window, 128/30 s),
  16 slow ones at stride 8; its head pools (16,7,7) and (64,7,7), the builder's own setting.
All three: short side 256, centre crop 256 at test time, pixels /255 then mean 0.45, std 0.225,
RGB; softmax over the 400 Kinetics classes; the head's input is 2048 slow + 256 fast channels.

One action detector (task "detection", ``create_slowfast_with_roi_head``), from the hub tutorial
``ava_inference_transform`` (https://pytorchvideo.org/docs/tutorial_torchhub_detection_inference):
- ``slowfast_r50_detection``: SlowFast 8x8 R50 with a RoI head, fine-tuned on AVA v2.2: a 1 s clip
  around each keyframe (the keyframe in its middle), 32 fast frames, slow every 4th; short side
  256 and no crop (boxes are scaled with the frames); the same mean and std; a per-class sigmoid
  over AVA's 80 actions; RoIAlign 7x7 at 1/16 scale on the 2048 + 256 channel feature map.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import torch
from pytorchvideo.models import hub
from pytorchvideo.models.net import Net

from handler.contract import (
    ACTIVATIONS, CHANNEL_ORDERS, CLASSIFICATION, DETECTION, DetectionContract, PreprocessContract,
)

KINETICS_400_LABELS = Path(__file__).resolve().parent / "kinetics400_labels.txt"
# AVA v2.2's 80 action names in label_id order (ids 1..80: output i is id i + 1), from AVA's
# ava_action_list_v2.2.pbtxt.
AVA_LABELS = Path(__file__).resolve().parent / "ava_v2.2_labels.txt"
MODEL_ZOO_ROOT = "https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo"
MODEL_ZOO = f"{MODEL_ZOO_ROOT}/kinetics"


@dataclass(frozen=True)
class Variant:
    """One SlowFast variant: how to build it, what it expects, where its trained weights are.

    ``builder(pretrained=False, model_num_class=N)`` returns the pytorchvideo ``Net``;
    ``num_frames`` fast frames (T_fast) spread over ``window_seconds``, the slow pathway every
    ``alpha``-th of them. ``top1``/``top5``/``gflops``/``params_m``: the model zoo's figures
    (Kinetics-400, 3 crops x 10 clips), for the README and the benchmark (None where the zoo
    gives none). ``task`` "detection": a RoI-head network taking person boxes, its clip
    ``window_seconds`` around a keyframe ``keyframe_at`` of the way into it, no crop
    (``crop_size`` = ``short_side``).
    """

    name: str
    builder: Callable[..., Net]
    num_frames: int
    alpha: int
    window_seconds: float
    checkpoint_url: str
    top1: Optional[float]
    top5: Optional[float]
    gflops: Optional[float]
    params_m: float
    short_side: int = 256
    crop_size: int = 256
    mean: Tuple[float, float, float] = (0.45, 0.45, 0.45)
    std: Tuple[float, float, float] = (0.225, 0.225, 0.225)
    channel_order: str = "RGB"
    activation: str = "softmax"
    labels_file: Path = KINETICS_400_LABELS
    slow_channels: int = 2048
    fast_channels: int = 256
    task: str = CLASSIFICATION
    keyframe_at: float = 0.5

    @property
    def embedding_size(self) -> int:
        return self.slow_channels + self.fast_channels


VARIANTS: Dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("slowfast_r50", hub.slowfast_r50, 32, 4, 64 / 30, f"{MODEL_ZOO}/SLOWFAST_8x8_R50.pyth",
                top1=76.94, top5=92.69, gflops=65.71, params_m=34.57),
        Variant("slowfast_r101", hub.slowfast_r101, 32, 4, 64 / 30, f"{MODEL_ZOO}/SLOWFAST_8x8_R101.pyth",
                top1=77.90, top5=93.27, gflops=127.20, params_m=62.83),
        Variant("slowfast_16x8_r101_50_50", hub.slowfast_16x8_r101_50_50, 64, 4, 128 / 30,
                f"{MODEL_ZOO}/SLOWFAST_16x8_R101_50_50.pyth", top1=78.70, top5=93.61, gflops=215.61, params_m=53.77),
        Variant("slowfast_r50_detection", hub.slowfast_r50_detection, 32, 4, 1.0,
                f"{MODEL_ZOO_ROOT}/ava/SLOWFAST_8x8_R50_DETECTION.pyth", top1=None, top5=None, gflops=None,
                params_m=33.83, activation="sigmoid", labels_file=AVA_LABELS, task=DETECTION, keyframe_at=0.5),
    )
}
DEFAULT_VARIANT = "slowfast_r50"
# The clip classifiers (one answer per video or window); the others detect actions per person box.
CLASSIFIERS: Dict[str, Variant] = {name: v for name, v in VARIANTS.items() if v.task == CLASSIFICATION}


class VariantError(ValueError):
    """An unknown variant, labels that do not fit the head, or a state dict no variant fits."""


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise VariantError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}") from None


def build(variant: Variant, num_classes: int = 400, seed: int = 0) -> Net:
    """The eager network in eval mode with pytorchvideo's own initialization under ``seed``."""
    torch.manual_seed(seed)
    return variant.builder(pretrained=False, model_num_class=num_classes).eval()


def skeleton_shapes(variant: Variant, num_classes: int) -> Dict[str, Tuple[int, ...]]:
    """The variant's state-dict keys and shapes, built on the meta device (no memory, ~0.5 s)."""
    with torch.device("meta"):
        model = variant.builder(pretrained=False, model_num_class=num_classes)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def head_classes(state_dict: Mapping[str, torch.Tensor]) -> int:
    """N, the rows of the head's projection weight (``blocks.<last>.proj.weight``, (N, 2304))."""
    projections = [key for key in state_dict if key.endswith("proj.weight") and state_dict[key].dim() == 2]
    if not projections:
        raise VariantError("the checkpoint has no head projection weight (a key ending in 'proj.weight')")
    return int(state_dict[projections[-1]].shape[0])


def recognise(state_dict: Mapping[str, torch.Tensor]) -> Variant:
    """The variant whose keys and shapes the state dict matches exactly."""
    classes = head_classes(state_dict)
    given = {key: tuple(value.shape) for key, value in state_dict.items()}
    for variant in VARIANTS.values():
        if skeleton_shapes(variant, classes) == given:
            return variant
    raise VariantError(
        f"the checkpoint ({len(given)} tensors, {classes} classes) matches none of {', '.join(VARIANTS)}: "
        "name its variant with --variant/VARIANT= to see which keys differ"
    )


def read_label_file(path: Path) -> Tuple[str, ...]:
    """Class names in logit order, from a text file (one per line) or a JSON map ``{name: index}``
    (Kinetics' classnames json); a JSON list is read as names in order."""
    import json

    text = Path(path).read_text(encoding="utf-8")
    if Path(path).suffix.lower() == ".json":
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise VariantError(f"{path} is not valid JSON: {exc}") from None
        if isinstance(raw, list):
            return tuple(str(name).strip() for name in raw)
        if not isinstance(raw, dict) or not all(isinstance(i, int) and not isinstance(i, bool) for i in raw.values()):
            raise VariantError(f"{path}: expected a JSON map {{name: index}} or a list of names")
        indices = sorted(raw.values())
        if indices != list(range(len(raw))):
            raise VariantError(f"{path}: the indices must be 0..{len(raw) - 1}, each once")
        return tuple(str(name).strip() for name, _ in sorted(raw.items(), key=lambda item: item[1]))
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def resolve_labels(variant: Variant, num_classes: int, labels_file: Optional[Path]) -> Tuple[str, ...]:
    """The labels for a head of ``num_classes``: the file given, else the variant's own when they fit."""
    if labels_file is None:
        labels = read_label_file(variant.labels_file)
        if len(labels) != num_classes:
            raise VariantError(
                f"the head has {num_classes} classes but no label file was given "
                f"({variant.name}'s own list has {len(labels)}): pass --labels/LABELS=classes.txt"
            )
        return labels
    labels = read_label_file(labels_file)
    if len(labels) != num_classes:
        raise VariantError(f"{labels_file} has {len(labels)} labels but the model's head has {num_classes} classes")
    if len(set(labels)) != len(labels):
        raise VariantError(f"{labels_file} repeats a label")
    return labels


def contract_for(
    variant: Variant,
    labels: Sequence[str],
    *,
    model_name: Optional[str] = None,
    weights: str = "unknown",
    activation: Optional[str] = None,
    channel_order: Optional[str] = None,
) -> PreprocessContract:
    """The contract of ``variant`` serving ``labels`` under ``model_name`` (default: the variant's name)."""
    activation = activation or variant.activation
    channel_order = channel_order or variant.channel_order
    if activation not in ACTIVATIONS or channel_order not in CHANNEL_ORDERS:
        raise VariantError(f"activation must be one of {ACTIVATIONS} and channel order one of {CHANNEL_ORDERS}")
    detection = variant.task == DETECTION
    return PreprocessContract(
        model_name=model_name or variant.name,
        num_frames=variant.num_frames,
        alpha=variant.alpha,
        window_seconds=variant.window_seconds,
        short_side=variant.short_side,
        crop_size=variant.crop_size,
        mean=variant.mean,
        std=variant.std,
        labels=tuple(labels),
        embedding_name=f"{variant.name}.head_input",
        embedding_size=variant.embedding_size,
        embedding_source=(
            f"per box: the RoI-aligned 7x7 feature of the time-pooled slow ({variant.slow_channels}) and fast "
            f"({variant.fast_channels}) maps, max-pooled over 7x7, before dropout and projection"
            if detection else
            f"head input: concat of the pooled slow ({variant.slow_channels}) and fast ({variant.fast_channels}) "
            "pathways, before dropout and projection, mean over T,H,W (the head's output_pool)"
        ),
        weights=weights,
        activation=activation,
        channel_order=channel_order,
        variant=variant.name,
        task=variant.task,
        detection=DetectionContract(keyframe_at=variant.keyframe_at) if detection else None,
    )


def with_weights(contract: PreprocessContract, weights: str) -> PreprocessContract:
    return dataclasses.replace(contract, weights=weights)
