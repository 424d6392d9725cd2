"""The preprocessing contract: what a model expects of its input, stored inside the model file.

The exporter decides the values (export/variants.py: one row per SlowFast variant) and embeds
them in the TorchScript file as an extra file (``torch.jit.save(..., _extra_files={CONTRACT_FILE:
...})``); the handler reads them back from the same file, so a model cannot be served with another
model's transform or label order. Tests and the benchmark read them from the model file or from
``export.reference.default_contract()``, except where the pytorchvideo hub tutorial's literal
values are the independent reference on purpose: tests/test_contract.py checks the contract against
them, and harness/reference.py rebuilds the tutorial's own pipeline with them. Unit tests of
functions that take such numbers as arguments (tests/test_transforms.py, the worked examples in
tests/test_sampling.py) pass them as plain inputs with hand-computed results.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, List, Optional, Tuple

import torch

CONTRACT_FILE = "slowfast_contract.json"
CONTRACT_VERSION = 5  # 2: embedding_* fields; 3: activation, channel_order, variant; 4: task, detection; 5: int8
# Version 2 files (before activation/channel order) read as softmax, RGB: what they were; files
# before version 4 are classifiers; files before version 5 carry no int8 model.
READABLE_VERSIONS = (2, 3, 4, 5)
# The int8 OpenVINO IR (export/int8.py) beside the contract in the model file, when there is one.
INT8_XML = "slowfast_int8.xml"
INT8_BIN = "slowfast_int8.bin"
ACTIVATIONS = ("softmax", "sigmoid")
CHANNEL_ORDERS = ("RGB", "BGR")
CLASSIFICATION = "classification"
DETECTION = "detection"
TASKS = (CLASSIFICATION, DETECTION)


class ContractError(ValueError):
    """The contract in a model file is missing or inconsistent."""


@dataclass(frozen=True)
class PersonDetector:
    """The person detector packed beside an action detector (``task`` "detection").

    ``file``: its TorchScript file, in the same directory as the model file (and the .mar);
    ``architecture``: the torchvision builder it is (e.g. ``fasterrcnn_resnet50_fpn``);
    ``label_index``: the class it finds persons as (COCO "person": 1 in torchvision's numbering);
    ``score_threshold``: boxes scoring below it are dropped; ``weights``: where its weights come from.
    """

    file: str
    architecture: str
    label_index: int
    score_threshold: float
    weights: str


@dataclass(frozen=True)
class DetectionContract:
    """What an action detector (pytorchvideo's ``slowfast_r50_detection``) adds to the contract.

    Its clip is ``window_seconds`` long around a keyframe: the keyframe lies ``keyframe_at`` of the
    way into it (0.5: the middle of a 1 s clip, AVA's and the hub tutorial's convention). Frames
    are scaled to the short side with no crop; boxes go in as (N, 5) float32 rows
    ``(clip index, x1, y1, x2, y2)`` in the scaled frame's pixels. ``person_detector``: the packed
    detector, or None when none was exported (requests must then carry boxes).
    """

    keyframe_at: float = 0.5
    person_detector: Optional[PersonDetector] = None

    @classmethod
    def from_dict(cls, raw: Dict[str, Any]) -> "DetectionContract":
        found = raw.get("person_detector")
        detector = None
        if found is not None:
            detector = PersonDetector(
                file=str(found["file"]), architecture=str(found["architecture"]),
                label_index=int(found["label_index"]), score_threshold=float(found["score_threshold"]),
                weights=str(found["weights"]),
            )
        return cls(keyframe_at=float(raw.get("keyframe_at", 0.5)), person_detector=detector)


@dataclass(frozen=True)
class Int8Figures:
    """How the int8 model in the file (``INT8_XML``/``INT8_BIN``) agrees with the fp32 model,
    measured at export on ``held_out_windows`` windows of ``held_out_videos`` videos that
    calibration never saw (export/int8.py ``agreement`` defines each figure).

    ``kept_fp32``: the layers left in fp32 to reach ``target_top1`` ("nothing", "head",
    "head+stems"); ``calibration_*``: what the quantizer saw; ``nncf``/``openvino``: versions.
    """

    top1_agreement: float
    top5_overlap: float
    max_abs_probability_delta: float
    logit_correlation: float
    kept_fp32: str
    target_top1: float
    calibration_windows: int
    held_out_windows: int
    calibration_videos: int
    held_out_videos: int
    calibration_folder: str
    nncf: str
    openvino: str

    def summary(self) -> str:
        return (
            f"top-1 agreement {self.top1_agreement:.3f}, top-5 overlap {self.top5_overlap:.3f}, "
            f"max |delta p| {self.max_abs_probability_delta:.4f}, logit correlation {self.logit_correlation:.5f} "
            f"on {self.held_out_windows} held-out windows of {self.held_out_videos} videos"
        )

    @classmethod
    def from_dict(cls, raw: Dict[str, Any]) -> "Int8Figures":
        types = {"float": float, "int": int, "str": str}
        return cls(**{f.name: types[str(f.type)](raw[f.name]) for f in fields(cls)})


@dataclass(frozen=True)
class PreprocessContract:
    """How to turn a video into the model's ``[slow, fast]`` input and read its output.

    Attributes:
        model_name: name reported in responses.
        num_frames: frames of the fast pathway per window (T_fast).
        alpha: the slow pathway keeps every ``alpha``-th of those frames (T_slow = T_fast / alpha).
        window_seconds: length of the time window the ``num_frames`` are spread over.
        short_side: frames are resized so their short side has this many pixels.
        crop_size: square crop taken from the resized frames (H = W = crop_size).
        mean, std: per-channel normalization applied to pixel values scaled to [0, 1].
        labels: class names in the order of the model's output logits.
        embedding_name, embedding_size, embedding_source: the feature vector
            ``forward_with_embedding`` returns beside the logits: its name, length and where in
            the network it is taken.
        weights: where the weights come from, e.g. "checkpoint SLOWFAST_8x8_R50.pyth sha256:1a2b3c4d5e6f"
            or "random weights, seed 0 (predictions are meaningless)"; "unknown" where not recorded.
        activation: "softmax" (one class per video; views averaged) or "sigmoid" (multi-label,
            per-class probabilities; views combined by max, the Charades protocol).
        channel_order: "RGB" or "BGR": the order of the model's input channels (mean/std follow it).
        variant: the architecture (export/variants.py) the weights are for; model_name is the
            serving name, which a fine-tuned model chooses freely.
        task: "classification" (one answer per video or window) or "detection" (actions per
            person box at keyframes: ``detection`` says how; ``crop_size`` equals ``short_side``, no crop).
        int8: the file also carries an int8 OpenVINO model (``make mar PRECISION=int8``) that CPU
            workers serve (runtime ``openvino-int8``), with its agreement figures; None: fp32 only.
    """

    model_name: str
    num_frames: int
    alpha: int
    window_seconds: float
    short_side: int
    crop_size: int
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    labels: Tuple[str, ...]
    embedding_name: str
    embedding_size: int
    embedding_source: str
    weights: str = "unknown"
    activation: str = "softmax"
    channel_order: str = "RGB"
    variant: str = "slowfast_r50"  # contracts before v3 name no variant: they were all this one
    task: str = CLASSIFICATION
    detection: Optional[DetectionContract] = None
    int8: Optional[Int8Figures] = None
    version: int = CONTRACT_VERSION

    def __post_init__(self) -> None:
        problems: List[str] = []
        if self.num_frames < 1 or self.alpha < 1 or self.num_frames % self.alpha:
            problems.append(f"num_frames={self.num_frames} must be a positive multiple of alpha={self.alpha}")
        if not self.window_seconds > 0:
            problems.append(f"window_seconds={self.window_seconds} must be > 0")
        if self.crop_size < 1 or self.short_side < self.crop_size:
            problems.append(f"crop_size={self.crop_size} must be in 1..short_side={self.short_side}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            problems.append("mean and std need 3 channels and std > 0")
        if len(self.labels) < 1 or len(set(self.labels)) != len(self.labels):
            problems.append("labels must be non-empty and unique")
        if self.embedding_size < 1 or not self.embedding_name:
            problems.append("the embedding needs a name and a size >= 1")
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation {self.activation!r} is not one of {ACTIVATIONS}")
        if self.channel_order not in CHANNEL_ORDERS:
            problems.append(f"channel_order {self.channel_order!r} is not one of {CHANNEL_ORDERS}")
        if self.task not in TASKS:
            problems.append(f"task {self.task!r} is not one of {TASKS}")
        elif (self.task == DETECTION) != (self.detection is not None):
            problems.append("a detection contract needs its detection settings, and only it has them")
        elif self.detection is not None and not 0 <= self.detection.keyframe_at <= 1:
            problems.append(f"keyframe_at={self.detection.keyframe_at} must lie in [0, 1]")
        if self.version != CONTRACT_VERSION:
            problems.append(f"contract version {self.version} is not {CONTRACT_VERSION}")
        if problems:
            raise ContractError("invalid preprocessing contract: " + "; ".join(problems))

    @property
    def slow_frames(self) -> int:
        return self.num_frames // self.alpha

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str | bytes) -> "PreprocessContract":
        try:
            raw: Dict[str, Any] = json.loads(text)
            version = int(raw.get("version", -1))
            return cls(
                model_name=str(raw["model_name"]),
                num_frames=int(raw["num_frames"]),
                alpha=int(raw["alpha"]),
                window_seconds=float(raw["window_seconds"]),
                short_side=int(raw["short_side"]),
                crop_size=int(raw["crop_size"]),
                mean=tuple(float(v) for v in raw["mean"]),  # type: ignore[arg-type]
                std=tuple(float(v) for v in raw["std"]),  # type: ignore[arg-type]
                labels=tuple(str(v) for v in raw["labels"]),
                embedding_name=str(raw["embedding_name"]),
                embedding_size=int(raw["embedding_size"]),
                embedding_source=str(raw["embedding_source"]),
                weights=str(raw.get("weights", "unknown")),
                activation=str(raw.get("activation", "softmax")),
                channel_order=str(raw.get("channel_order", "RGB")),
                variant=str(raw.get("variant", raw["model_name"])),
                task=str(raw.get("task", CLASSIFICATION)),
                detection=DetectionContract.from_dict(raw["detection"]) if raw.get("detection") else None,
                int8=Int8Figures.from_dict(raw["int8"]) if raw.get("int8") else None,
                version=CONTRACT_VERSION if version in READABLE_VERSIONS else version,
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ContractError):
                raise
            raise ContractError(f"unreadable preprocessing contract: {exc!r}") from exc


def stored_files(model_file: "str | os.PathLike[str]", names: Tuple[str, ...]) -> Optional[List[bytes]]:
    """The contents of ``names`` among the extra files ``torch.jit.save`` stored in a TorchScript
    file (a zip whose members are ``<archive>/extra/<name>``), without loading the module; None if
    one of them is absent."""
    with zipfile.ZipFile(model_file) as archive:
        members = {name.rsplit("/extra/", 1)[-1]: name for name in archive.namelist() if "/extra/" in name}
        if not all(name in members for name in names):
            return None
        return [archive.read(members[name]) for name in names]


def contract_of(model_file: "str | os.PathLike[str]") -> Optional[PreprocessContract]:
    """The contract inside a TorchScript file, read without loading the model (None: it has none)."""
    found = stored_files(model_file, (CONTRACT_FILE,))
    return PreprocessContract.from_json(found[0]) if found is not None else None


def activate(logits: torch.Tensor, activation: str) -> torch.Tensor:
    """(B, classes) logits -> (B, classes) float32 probabilities: softmax over classes, or a
    sigmoid per class (multi-label: they need not sum to 1). Computed in float32 whatever the
    logits' dtype (fp16 autocast)."""
    logits = logits.float()
    if activation == "sigmoid":
        return torch.sigmoid(logits)
    if activation == "softmax":
        return torch.softmax(logits, dim=1)
    raise ContractError(f"activation {activation!r} is not one of {ACTIVATIONS}")


def combine_views(probabilities: torch.Tensor, activation: str) -> torch.Tensor:
    """(V, classes) probabilities of V views (crops, windows) -> (classes,): the mean for softmax,
    the max for sigmoid (a multi-label action seen in any view is in the video: Charades' protocol)."""
    return probabilities.amax(0) if activation == "sigmoid" else probabilities.mean(0)
