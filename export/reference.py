"""The default model's contract and labels (pytorchvideo's Kinetics-400 ``slowfast_r50``).

The numbers live in export/variants.py; this module keeps the names tests and the benchmark use
for the default model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from export.variants import DEFAULT_VARIANT, KINETICS_400_LABELS, VARIANTS, contract_for, read_label_file
from handler.contract import PreprocessContract

DEFAULT = VARIANTS[DEFAULT_VARIANT]
MODEL_NAME = DEFAULT.name
LABELS_FILE = KINETICS_400_LABELS
NUM_CLASSES = len(read_label_file(LABELS_FILE))
EMBEDDING_SIZE = DEFAULT.embedding_size


def read_labels(path: Path = LABELS_FILE) -> Sequence[str]:
    return read_label_file(path)


def default_contract(labels: Optional[Sequence[str]] = None) -> PreprocessContract:
    """The contract of the default variant with its own labels (or ``labels``)."""
    return contract_for(DEFAULT, labels if labels is not None else read_labels())

