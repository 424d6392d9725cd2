"""The preprocessing SlowFast R50 was trained and evaluated with: the one place these numbers live.

Values follow pytorchvideo's hub tutorial for ``slowfast_r50``: 32 frames sampled over a
64-frame window at 30 fps, short side and center crop 256, pixel values /255 normalized with
mean 0.45 and std 0.225, slow pathway = every 4th (alpha) of the 32 frames.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from handler.contract import PreprocessContract

MODEL_NAME = "slowfast_r50"
NUM_CLASSES = 400
# The head's input: 2048 slow + 256 fast channels, each pathway pooled by PoolConcatPathway.
EMBEDDING_SIZE = 2048 + 256
LABELS_FILE = Path(__file__).resolve().parent / "kinetics400_labels.txt"


def read_labels(path: Path = LABELS_FILE) -> Sequence[str]:
    labels = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(labels) != NUM_CLASSES:
        raise ValueError(f"{path} has {len(labels)} labels, expected {NUM_CLASSES}")
    return labels


def slowfast_r50_contract(labels: Optional[Sequence[str]] = None) -> PreprocessContract:
    """The contract of pytorchvideo's Kinetics-400 ``slowfast_r50`` (8x8 sampling)."""
    return PreprocessContract(
        model_name=MODEL_NAME,
        num_frames=32,
        alpha=4,
        window_seconds=64 / 30,
        short_side=256,
        crop_size=256,
        mean=(0.45, 0.45, 0.45),
        std=(0.225, 0.225, 0.225),
        labels=tuple(labels if labels is not None else read_labels()),
        embedding_name="slowfast_r50.head_input",
        embedding_size=EMBEDDING_SIZE,
        embedding_source=(
            "head input: concat of the pooled slow (2048) and fast (256) pathways, "
            "before dropout and projection, mean over T,H,W (the head's output_pool)"
        ),
    )
