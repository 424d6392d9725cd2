"""The person detector packed beside an action detector: torchvision's COCO Faster R-CNN, scripted.

Weights follow the classifier's rules (export/checkpoint.py): ``default`` is torchvision's COCO
checkpoint, downloaded once into torch.hub's cache; where it cannot be fetched the export packs
NO detector and says so loudly (requests must then carry person boxes: a made-up detector would
find made-up people). ``random`` packs seeded random weights (tests), a path or URL must load.
``none`` packs no detector.

The hub tutorial finds persons with a COCO Faster R-CNN and keeps boxes scoring >= 0.75;
torchvision's COCO numbering has "person" at 1.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import torch
import torchvision

from export.checkpoint import CheckpointError, checkpoint_name, load_strict, read_state_dict, weights_origin
from handler.contract import PersonDetector

log = logging.getLogger(__name__)

ARCHITECTURE = "fasterrcnn_resnet50_fpn"
COCO_PERSON = 1
SCORE_THRESHOLD = 0.75
DEFAULT = "default"
RANDOM = "random"
NONE = "none"


def coco_weights_url() -> str:
    """torchvision's own COCO checkpoint for ``fasterrcnn_resnet50_fpn``."""
    return torchvision.models.detection.FasterRCNN_ResNet50_FPN_Weights.COCO_V1.url


def build_person_detector(seed: int = 0) -> torch.nn.Module:
    """torchvision's ``fasterrcnn_resnet50_fpn`` (91 COCO classes) with seeded random weights, eval mode."""
    torch.manual_seed(seed)
    return torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).eval()


def detector_file_name(model_file: Path) -> str:
    """``build/NAME.pt`` -> ``NAME.persons.pt``, the file beside it (and in the .mar)."""
    return f"{model_file.stem}.persons.pt"


def export_person_detector(model_file: Path, source: Optional[str], seed: int = 0,
                           threshold: float = SCORE_THRESHOLD) -> Optional[PersonDetector]:
    """Script the detector beside ``model_file``; its contract entry, or None when none is packed.

    ``source``: ``default`` (None), ``random``, ``none``, a path or an http(s) URL.
    """
    source = source or DEFAULT
    output = model_file.with_name(detector_file_name(model_file))
    if source == NONE:
        output.unlink(missing_ok=True)
        log.warning("no person detector packed (PERSON_DETECTOR=none): requests must carry person boxes")
        return None
    model = build_person_detector(seed)
    if source == RANDOM:
        weights = weights_origin(None, seed)
        log.warning("person detector: SEEDED RANDOM WEIGHTS (it will find no real person)")
    else:
        location = coco_weights_url() if source == DEFAULT else source
        try:
            state = read_state_dict(location)
        except CheckpointError as exc:
            if source != DEFAULT:
                raise
            output.unlink(missing_ok=True)
            log.warning(
                "PERSON DETECTION IS OFF: torchvision's COCO Faster R-CNN weights are unavailable (%s). The served "
                "model answers only requests that carry person boxes; export where %s is reachable, or give "
                "PERSON_DETECTOR=/path/to/%s.", exc, location, checkpoint_name(location),
            )
            return None
        load_strict(model, state, location, what=ARCHITECTURE)
        weights = weights_origin(location, seed)
    scripted = torch.jit.script(model)
    partial = output.with_name(output.name + ".partial")
    torch.jit.save(scripted, str(partial))
    os.replace(partial, output)
    log.info("wrote %s (%.1f MB): person detector %s, weights: %s", output, output.stat().st_size / 1e6,
             ARCHITECTURE, weights)
    return PersonDetector(file=output.name, architecture=ARCHITECTURE, label_index=COCO_PERSON,
                          score_threshold=threshold, weights=weights)
