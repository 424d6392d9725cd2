"""``python -m export --output build/slowfast_r50.pt [--checkpoint PATH_OR_URL]``.

Builds SlowFast R50 with pytorchvideo, scripts it, checks the scripted module against the eager
one (batch 1 and 3, crops 224 and 256), saves it with its preprocessing contract, reloads the
saved file and checks it again. Exits non-zero with a message on any failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import List, Optional

from export.build import build_slowfast_r50
from export.checkpoint import CheckpointError, weights_origin
from export.reference import slowfast_r50_contract
from export.save import load_with_contract, save_with_contract
from export.scriptable import ScriptabilityError, script_slowfast
from export.verify import TOLERANCE, VerificationError, check_against, reference_outputs

log = logging.getLogger("export")

RANDOM_WEIGHTS_WARNING = (
    "No --checkpoint given: exporting SEEDED RANDOM WEIGHTS. The service will run, but its "
    "predictions mean nothing until you export trained weights, e.g. "
    "`make export CHECKPOINT=/path/to/SLOWFAST_8x8_R50.pyth` "
    "(pytorchvideo model zoo: https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics/SLOWFAST_8x8_R50.pyth)."
)


def export(output: Path, checkpoint: Optional[str], seed: int) -> None:
    started = time.monotonic()
    if not checkpoint:
        log.warning(RANDOM_WEIGHTS_WARNING)
    eager = build_slowfast_r50(checkpoint, seed=seed)
    # After the build: a URL checkpoint is in the hub cache by now, hashed without a second download.
    contract = dataclasses.replace(slowfast_r50_contract(), weights=weights_origin(checkpoint, seed))
    log.info("weights: %s", contract.weights)
    log.info("built slowfast_r50 (%d parameters)", sum(p.numel() for p in eager.parameters()))
    scripted = script_slowfast(eager)
    expected = reference_outputs(eager, contract)
    worst = check_against(scripted, expected, contract, "scripted")
    save_with_contract(scripted, contract, output)
    reloaded, reloaded_contract = load_with_contract(output)
    if reloaded_contract != contract:
        raise VerificationError("the contract read back from the saved file differs from the one written")
    worst = max(worst, check_against(reloaded, expected, contract, "reloaded"))
    log.info(
        "wrote %s (%.1f MB): scripted == eager (logits and embedding) within %.2g (max |diff| %.2g) in %.0f s",
        output, output.stat().st_size / 1e6, TOLERANCE, worst, time.monotonic() - started,
    )


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, type=Path, help="where to write the TorchScript .pt")
    parser.add_argument("--checkpoint", default=None, help="model-zoo .pyth / state-dict file, or an http(s) URL")
    parser.add_argument("--seed", type=int, default=0, help="seed for random weights (no checkpoint)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        export(args.output, args.checkpoint, args.seed)
    except (CheckpointError, ScriptabilityError, VerificationError) as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
