"""``python -m deploy.kserve.build``: lay out the .mar the way the KServe pod reads it.

KServe's storage initializer copies the InferenceService's ``storageUri`` to ``/mnt/models``; the
``slowfast-serve`` runtime then runs ``python -m deploy.kserve.server --model_dir /mnt/models``,
which starts ``torchserve --ts-config /mnt/models/config/config.properties --model-store
/mnt/models/model-store`` and reads the same file. So the upload is::

    <output>/config/config.properties   the repo's config.properties + deploy/kserve/config.properties
                                        + a model_snapshot naming the model (the server registers one
                                        KServe model per entry; TorchServe loads the model from it)
    <output>/model-store/<model>.mar    the very .mar served locally (hard link where possible)

Worker and batch settings in the snapshot are read from the model-config.yaml packed in that .mar,
so the archive stays the single source. With ``--envelope kserve|kservev2`` the stock TorchServe
envelope is switched on and ``batchSize`` is pinned to 1: those envelopes answer only the first
request of a batch (pytorch/serve #2158, #1302); that variant is for KServe's old stock TorchServe
runtime only (our model server refuses it). ``--gpus N`` pins ``number_of_gpu`` and runs
``--workers-per-gpu`` workers on each.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import yaml

from client.config import REPO, read_properties
from client.endpoint import default_model

HERE = Path(__file__).resolve().parent
BASE_CONFIG = REPO / "config.properties"
OVERLAY = HERE / "config.properties"
DEFAULT_MAR = REPO / "model_store" / f"{default_model()}.mar"  # what `make mar` wrote for config.properties' model
DEFAULT_OUTPUT = HERE / "build"
ENVELOPES = ("kserve", "kservev2")
# Snapshot fields TorchServe reads per model version, as named in model-config.yaml.
SNAPSHOT_FIELDS = ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout")
# Keys that only make sense for the repo's own server (it loads models by name, not by snapshot).
LOCAL_ONLY = ("load_models",)


def mar_facts(mar: Path) -> Dict[str, Any]:
    """Name, version and packed model-config of a .mar: ``{"name", "version", "model_config"}``."""
    with zipfile.ZipFile(mar) as archive:
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        model = manifest["model"]
        config_name = model.get("configFile")
        config = yaml.safe_load(archive.read(config_name)) if config_name else {}
    return {"name": model["modelName"], "version": model["modelVersion"], "model_config": config or {}}


def model_snapshot(
    facts: Mapping[str, Any], mar_name: str, batch_size: Optional[int] = None, workers: Optional[int] = None
) -> Dict[str, Any]:
    """TorchServe's startup snapshot for one model: what it loads, with which workers and batching."""
    config = facts["model_config"]
    entry: Dict[str, Any] = {"defaultVersion": True, "marName": mar_name}
    entry.update({key: config[key] for key in SNAPSHOT_FIELDS if key in config})
    if batch_size is not None:
        entry["batchSize"] = batch_size
    if workers is not None:
        entry["minWorkers"] = entry["maxWorkers"] = workers
    return {"name": "startup.cfg", "modelCount": 1, "models": {facts["name"]: {facts["version"]: entry}}}


def kserve_properties(
    mar: Path = DEFAULT_MAR,
    envelope: Optional[str] = None,
    gpus: Optional[int] = None,
    workers_per_gpu: int = 1,
) -> Dict[str, str]:
    """The full config.properties for the pod, as an ordered key -> value mapping.

    Args:
        mar: the archive to serve (its manifest and packed model-config.yaml are read).
        envelope: None (the handler reads KServe v1/v2 itself; batching on) or a stock envelope
            name, which pins ``batchSize`` to 1 in the snapshot and in the ``models`` override.
        gpus: pin ``number_of_gpu`` (None: TorchServe counts the GPUs the pod was given).
        workers_per_gpu: with ``gpus``, workers = gpus x workers_per_gpu.
    """
    if envelope is not None and envelope not in ENVELOPES:
        raise ValueError(f"envelope must be one of {ENVELOPES} or None, got {envelope!r}")
    if gpus is not None and (gpus < 1 or workers_per_gpu < 1):
        raise ValueError("gpus and workers_per_gpu must be >= 1")
    facts = mar_facts(mar)
    properties = {k: v for k, v in read_properties(BASE_CONFIG).items() if k not in LOCAL_ONLY}
    properties.update(read_properties(OVERLAY))
    batch_size = 1 if envelope else None
    workers = gpus * workers_per_gpu if gpus is not None else None
    if gpus is not None:
        properties["number_of_gpu"] = str(gpus)
    if envelope:
        properties["service_envelope"] = envelope
        # Also override what the .mar's model-config.yaml says, whichever TorchServe lets win.
        properties["models"] = json.dumps(
            {facts["name"]: {facts["version"]: {"batchSize": 1}}}, separators=(",", ":")
        )
    # One line of JSON: config.properties is read line by line.
    snapshot = model_snapshot(facts, mar.name, batch_size=batch_size, workers=workers)
    properties["model_snapshot"] = json.dumps(snapshot, separators=(",", ":"))
    return properties


def render(properties: Mapping[str, str], command: str) -> str:
    header = (
        f"# Generated by `{command}` from config.properties and deploy/kserve/config.properties.\n"
        "# Do not edit: change those files and rebuild.\n"
    )
    return header + "".join(f"{key}={value}\n" for key, value in properties.items())


def _place(source: Path, target: Path) -> None:
    if target.exists() or target.is_symlink():
        target.unlink()
    try:
        os.link(source, target)  # ~130 MB: no copy where the filesystem allows
    except OSError:
        shutil.copy2(source, target)


def build(
    mar: Path = DEFAULT_MAR,
    output: Path = DEFAULT_OUTPUT,
    *,
    envelope: Optional[str] = None,
    gpus: Optional[int] = None,
    workers_per_gpu: int = 1,
    command: str = "python -m deploy.kserve.build",
) -> Dict[str, Path]:
    """Write ``output/config/config.properties`` and ``output/model-store/<mar>``; return both paths."""
    mar = Path(mar).resolve()
    if not mar.is_file():
        raise FileNotFoundError(f"{mar} not found: run `make mar` first")
    properties = kserve_properties(mar, envelope=envelope, gpus=gpus, workers_per_gpu=workers_per_gpu)
    config_dir, store = Path(output) / "config", Path(output) / "model-store"
    config_dir.mkdir(parents=True, exist_ok=True)
    store.mkdir(parents=True, exist_ok=True)
    # One archive per upload: the snapshot names exactly this one.
    for stale in store.glob("*.mar"):
        if stale.name != mar.name:
            stale.unlink()
    _place(mar, store / mar.name)
    config = config_dir / "config.properties"
    config.write_text(render(properties, command))
    return {"config": config, "mar": store / mar.name}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.kserve.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mar", type=Path, default=DEFAULT_MAR)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--envelope", choices=ENVELOPES, help="use TorchServe's stock envelope (pins batchSize 1)")
    parser.add_argument("--gpus", type=int, help="number_of_gpu (default: every GPU the pod was given)")
    parser.add_argument("--workers-per-gpu", type=int, default=1)
    args = parser.parse_args(argv)
    command = "python -m deploy.kserve.build" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    paths = build(args.mar, args.output, envelope=args.envelope, gpus=args.gpus, workers_per_gpu=args.workers_per_gpu,
                  command=command)
    print(f"wrote {paths['config']}\nwrote {paths['mar']}\nupload {args.output}/ and set storageUri to its location")
    return 0


if __name__ == "__main__":
    sys.exit(main())
