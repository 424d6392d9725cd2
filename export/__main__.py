"""``python -m export --output build/NAME.pt [--model-name NAME] [--variant V] [--checkpoint default|random|PATH|URL] [--checkpoint-sha256 HEX|file-name] [--labels FILE] [--precision int8 [--calibration DIR]]``.

Builds a SlowFast variant (export/variants.py) with pytorchvideo, loads its weights, scripts it,
checks the scripted module against the eager one (batch 1 and 3, crops 224 and 256), saves it
with its preprocessing contract, reloads the saved file and checks it again. Exits non-zero with a
message on any failure.

Weights: ``default`` (or none given) is the variant's model-zoo checkpoint, downloaded once into
torch.hub's cache; where it cannot be fetched (no network) the export falls back to seeded random
weights and says so, here and in every answer. ``random`` asks for those; a path or URL must load.
``--checkpoint-sha256`` (``make mar CHECKPOINT_SHA256=``): the checkpoint's SHA-256 (or its first
8+ hex digits; ``file-name``: the prefix its name carries, torch.hub's check_hash convention),
checked before its weights are used; a mismatch is an error, never a fallback to random weights.
A fine-tuned checkpoint's class count comes from its head; ``--labels`` names its classes.

An action detector (a variant with task "detection", e.g. ``slowfast_r50_detection``) is scripted
and checked by ``export.scriptable_detection`` / ``export.verify_detection``, and its person
detector (``--person-detector``, export/person_detector.py) is scripted beside it.
``--precision int8`` also stores an int8 OpenVINO model in the file (export/int8.py: calibrated on
the handler's windows of real videos, its agreement with fp32 measured on held-out ones, printed
and stored in the contract), which CPU workers serve as ``openvino-int8``; below
``--int8-min-agreement`` top-1 agreement the export refuses.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from export.build import build_variant
from export.calibration import CalibrationError
from export.checkpoint import ChecksumError, CheckpointError, checkpoint_name, read_state_dict, weights_origin
from export.person_detector import SCORE_THRESHOLD, export_person_detector
from export.int8 import DEFAULT_MIN_AGREEMENT, Int8Error, int8_for_export
from export.save import load_with_contract, save_with_contract
from export.scriptable import ScriptabilityError, script_slowfast
from export.scriptable_detection import script_detector
from export.variants import (
    DEFAULT_VARIANT, VARIANTS, Variant, VariantError, contract_for, get_variant, head_classes, read_label_file,
    recognise, resolve_labels,
)
from export.verify import TOLERANCE, VerificationError, check_against, reference_outputs
from export.verify_detection import check_detector, detection_reference
from handler.contract import ACTIVATIONS, CHANNEL_ORDERS, DETECTION, PreprocessContract

log = logging.getLogger("export")

DEFAULT_WEIGHTS = "default"
# fp32: the TorchScript model alone; int8: with an int8 OpenVINO model beside it (export/int8.py).
PRECISIONS = ("fp32", "int8")
RANDOM_WEIGHTS = "random"


def random_weights_warning(variant: Variant, why: str) -> str:
    return (
        f"{why}: exporting SEEDED RANDOM WEIGHTS. The service will run, but its predictions mean "
        f"nothing until you export trained weights: `make mar MODEL={variant.name}` on a machine that "
        f"reaches {variant.checkpoint_url}, or `make mar CHECKPOINT=/path/to/{variant.checkpoint_url.rsplit('/', 1)[-1]}`."
    )


def choose_variant(requested: Optional[str], model_name: str, state_dict: Optional[Dict[str, torch.Tensor]]) -> Variant:
    """--variant, else the serving name when it is a variant's, else the one the weights fit, else the default."""
    if requested:
        return get_variant(requested)
    if model_name in VARIANTS:
        return VARIANTS[model_name]
    if state_dict is not None:
        found = recognise(state_dict)
        log.info("the checkpoint's shapes are those of %s", found.name)
        return found
    return VARIANTS[DEFAULT_VARIANT]


def load_weights(
    checkpoint: str, requested_variant: Optional[str], model_name: str, seed: int, sha256: Optional[str] = None,
) -> Tuple[Variant, Optional[Dict[str, torch.Tensor]], str]:
    """(variant, state dict or None for random weights, the contract's ``weights`` text).

    ``sha256``: the checkpoint's expected SHA-256 (``read_state_dict``); a mismatch always raises."""
    if checkpoint == RANDOM_WEIGHTS and sha256:
        raise CheckpointError("--checkpoint-sha256 checks a checkpoint: it does not apply to random weights")
    if checkpoint == RANDOM_WEIGHTS:
        variant = choose_variant(requested_variant, model_name, None)
        log.warning(random_weights_warning(variant, "CHECKPOINT=random"))
        return variant, None, weights_origin(None, seed)
    if checkpoint == DEFAULT_WEIGHTS:
        variant = choose_variant(requested_variant, model_name, None)
        try:
            state = read_state_dict(variant.checkpoint_url, sha256)
        except ChecksumError:
            raise  # other weights than the ones asked for: never replaced by random ones
        except CheckpointError as exc:
            why = f"{variant.name}'s model-zoo checkpoint is unavailable ({exc})"
            log.warning(random_weights_warning(variant, why))
            reason = str(exc).replace(f" checkpoint {variant.checkpoint_url}: ", ": ").replace(f"checkpoint {variant.checkpoint_url}", "it")
            return variant, None, weights_origin(None, seed, f"{checkpoint_name(variant.checkpoint_url)}: {reason}")
        return variant, state, weights_origin(variant.checkpoint_url, seed)
    state = read_state_dict(checkpoint, sha256)
    variant = choose_variant(requested_variant, model_name, state)
    return variant, state, weights_origin(checkpoint, seed)


def export(
    output: Path,
    checkpoint: Optional[str] = None,
    seed: int = 0,
    *,
    model_name: Optional[str] = None,
    variant: Optional[str] = None,
    labels: Optional[Path] = None,
    activation: Optional[str] = None,
    channel_order: Optional[str] = None,
    person_detector: Optional[str] = None,
    person_threshold: float = SCORE_THRESHOLD,
    precision: str = "fp32",
    calibration: Optional[Path] = None,
    int8_min_agreement: float = DEFAULT_MIN_AGREEMENT,
    checkpoint_sha256: Optional[str] = None,
) -> PreprocessContract:
    """Export and verify; returns the contract written. ``checkpoint`` None means ``default``;
    ``person_detector`` (an action detector's): default, random, none, a path or URL.

    ``precision`` int8 (classifiers): with an int8 model calibrated on the videos in ``calibration``
    (None: the default folder), refused below ``int8_min_agreement`` top-1 agreement with fp32."""
    started = time.monotonic()
    name = model_name or output.stem
    chosen, state, weights = load_weights(checkpoint or DEFAULT_WEIGHTS, variant, name, seed, checkpoint_sha256)
    classes = head_classes(state) if state is not None else len(read_label_file(labels or chosen.labels_file))
    contract = contract_for(
        chosen, resolve_labels(chosen, classes, labels), model_name=name, weights=weights,
        activation=activation, channel_order=channel_order,
    )
    eager = build_variant(chosen, state, source=checkpoint or chosen.checkpoint_url, seed=seed, num_classes=classes)
    log.info("weights: %s", contract.weights)
    log.info("built %s as %s: %d classes, %s, %s input (%d parameters)", chosen.name, name, contract.num_classes,
             contract.activation, contract.channel_order, sum(p.numel() for p in eager.parameters()))
    extra: Dict[str, bytes] = {}
    if contract.task == DETECTION:
        if precision == "int8":
            raise Int8Error("--precision int8 quantizes classifiers; an action detector exports in fp32")
        assert contract.detection is not None
        found = export_person_detector(output, person_detector, seed=seed, threshold=person_threshold)
        contract = dataclasses.replace(contract, detection=dataclasses.replace(contract.detection, person_detector=found))
        scripted = script_detector(eager)
        expected_boxes = detection_reference(eager, contract)

        def check(candidate: torch.jit.ScriptModule, label: str) -> float:
            return check_detector(candidate, expected_boxes, contract, label)
    else:
        scripted = script_slowfast(eager)
        expected = reference_outputs(eager, contract)

        def check(candidate: torch.jit.ScriptModule, label: str) -> float:
            return check_against(candidate, expected, contract, label)
    worst = check(scripted, "scripted")
    if precision == "int8":
        contract, extra = int8_for_export(scripted, contract, calibration, floor=int8_min_agreement)
    save_with_contract(scripted, contract, output, extra)
    reloaded, reloaded_contract = load_with_contract(output)
    if reloaded_contract != contract:
        raise VerificationError("the contract read back from the saved file differs from the one written")
    worst = max(worst, check(reloaded, "reloaded"))
    log.info(
        "wrote %s (%.1f MB): scripted == eager (logits and embedding) within %.2g (max |diff| %.2g) in %.0f s",
        output, output.stat().st_size / 1e6, TOLERANCE, worst, time.monotonic() - started,
    )
    return contract


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, type=Path, help="where to write the TorchScript .pt")
    parser.add_argument("--checkpoint", default=DEFAULT_WEIGHTS,
                        help="default (the variant's model-zoo weights, random if unreachable), random, a file or an http(s) URL")
    parser.add_argument("--checkpoint-sha256", default=None, metavar="HEX|file-name",
                        help="the checkpoint's SHA-256 (or its first 8+ hex digits), checked before its weights are used; "
                             "file-name: the prefix in its name (NAME-<hex>.EXT, torch.hub's check_hash)")
    parser.add_argument("--model-name", default=None, help="the serving name (default: the output's stem)")
    parser.add_argument("--variant", default=None, choices=sorted(VARIANTS),
                        help="the architecture (default: the model name's, else recognised from the checkpoint)")
    parser.add_argument("--labels", type=Path, default=None, help="class names: text, one per line, or JSON {name: index}")
    parser.add_argument("--activation", choices=ACTIVATIONS, default=None, help="softmax (default) or sigmoid (multi-label)")
    parser.add_argument("--channel-order", choices=CHANNEL_ORDERS, default=None, help="the model's input channel order")
    parser.add_argument("--seed", type=int, default=0, help="seed for random weights")
    parser.add_argument("--person-detector", default=None,
                        help="an action detector's person detector: default (torchvision's COCO weights; none packed "
                             "if unreachable), random, none, a file or an http(s) URL")
    parser.add_argument("--person-threshold", type=float, default=SCORE_THRESHOLD,
                        help="the person detector's score threshold (the hub tutorial's 0.75)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="int8: also store an int8 OpenVINO model, calibrated and measured (export/int8.py)")
    parser.add_argument("--calibration", type=Path, default=None,
                        help="int8: a folder of videos to calibrate on (default: ../shared/videos where present)")
    parser.add_argument("--int8-min-agreement", type=float, default=DEFAULT_MIN_AGREEMENT,
                        help="int8: refuse below this top-1 agreement with fp32 on held-out windows")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        export(args.output, args.checkpoint, args.seed, model_name=args.model_name, variant=args.variant,
               labels=args.labels, activation=args.activation, channel_order=args.channel_order,
               person_detector=args.person_detector, person_threshold=args.person_threshold,
               precision=args.precision, calibration=args.calibration, int8_min_agreement=args.int8_min_agreement,
               checkpoint_sha256=args.checkpoint_sha256)
    except (CheckpointError, VariantError, ScriptabilityError, VerificationError, OSError, CalibrationError,
            Int8Error) as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
