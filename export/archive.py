"""``python -m export.archive``: pack the TorchScript file, the handler package and model-config.yaml into a .mar.

The ``handler`` package is staged without caches and lands in the model directory as a package,
so its modules import each other as ``handler.*`` inside TorchServe exactly as in this repo. An
action detector's person detector (named by the contract in the model file) is packed beside it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

from handler.contract import contract_of

REPO = Path(__file__).resolve().parent.parent
HANDLER_PACKAGE = REPO / "handler"
ENTRY_MODULE = HANDLER_PACKAGE / "slowfast_handler.py"


def packed_files(model_file: Path) -> List[Path]:
    """Files the model file's contract names beside it (an action detector's person detector)."""
    contract = contract_of(model_file)
    detector = contract.detection.person_detector if contract is not None and contract.detection else None
    if detector is None:
        return []
    path = model_file.with_name(detector.file)
    if not path.is_file():
        raise FileNotFoundError(f"{path} (the person detector {model_file.name} names) not found: re-export it")
    return [path]


def build_archive(model_file: Path, output: Path, config_file: Path, model_name: Optional[str] = None) -> Path:
    model_name = model_name or output.stem
    if not model_file.is_file():
        raise FileNotFoundError(f"{model_file} not found: run `make export` first")
    archiver = Path(sys.executable).with_name("torch-model-archiver")
    command = [str(archiver)] if archiver.exists() else [sys.executable, "-m", "model_archiver.model_packaging"]
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mar-") as scratch:
        extra = Path(scratch) / "extra"
        shutil.copytree(HANDLER_PACKAGE, extra / "handler", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for path in packed_files(model_file):
            shutil.copy2(path, extra / path.name)
        env = {**os.environ, "TMPDIR": scratch}  # the archiver stages in $TMPDIR/<name>: keep builds apart
        subprocess.run(
            command + [
                "--model-name", model_name,
                "--version", "1.0",
                "--serialized-file", str(model_file),
                "--handler", str(ENTRY_MODULE),
                "--extra-files", str(extra),
                "--config-file", str(config_file),
                "--export-path", str(output.parent),
                "--force",
            ],
            check=True,
            env=env,
        )
    built = output.parent / f"{model_name}.mar"
    if built != output:
        os.replace(built, output)
    return output


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.archive", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-file", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True, help="path of the .mar, e.g. model_store/slowfast_r50.mar")
    parser.add_argument("--config-file", type=Path, default=REPO / "model-config.yaml")
    args = parser.parse_args(argv)
    path = build_archive(args.model_file, args.output, args.config_file)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
