"""Shared fixtures: the shared clip corpus, built artifacts, and one real TorchServe per session."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.paths import MAR, MODEL, PT, REPO, SHARED_VIDEOS as VIDEOS  # noqa: E402
from harness.torchserve import LocalTorchServe  # noqa: E402

# The model `make mar` builds and config.properties serves (harness/paths.py); its name, classes
# and embedding size come from its contract (the ``contract`` fixture), not from literals.


def read_manifest() -> Dict[str, Dict[str, str]]:
    """../shared/videos/MANIFEST.tsv as {file name: row}."""
    lines = (VIDEOS / "MANIFEST.tsv").read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    return {row.split("\t")[0]: dict(zip(header, row.split("\t"))) for row in lines[1:] if row.strip()}


@pytest.fixture(scope="session")
def shared_videos() -> Path:
    if not (VIDEOS / "MANIFEST.tsv").is_file():
        pytest.skip(f"shared clip corpus not found at {VIDEOS} (expected ../shared/videos beside the repo)")
    return VIDEOS


@pytest.fixture(scope="session")
def manifest(shared_videos: Path) -> Dict[str, Dict[str, str]]:
    return read_manifest()


@pytest.fixture(scope="session")
def built() -> Dict[str, Path]:
    """The exported .pt and the .mar, built (or reused when up to date) by the Makefile's own rules."""
    subprocess.run(["make", "--no-print-directory", "mar"], cwd=REPO, check=True)
    return {"pt": PT, "mar": MAR}


@pytest.fixture(scope="session")
def server(built: Dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTorchServe]:
    """One real TorchServe on 127.0.0.1 (free ports) serving the built .mar for the whole session."""
    instance = LocalTorchServe(built["mar"], tmp_path_factory.mktemp("torchserve"))
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="session")
def contract(built: Dict[str, Path]):
    from export.save import load_with_contract

    _, loaded = load_with_contract(built["pt"])
    return loaded


@pytest.fixture(scope="session")
def non_flat_model_dir(shared_videos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory holding ``<MODEL>.pt`` exported from a checkpoint whose answers depend
    on the input (tests/checkpoints.py): for tests that judge probabilities or embeddings."""
    from tests.checkpoints import export_non_flat

    directory = tmp_path_factory.mktemp("non_flat_model")
    export_non_flat(directory, shared_videos)
    return directory


# Fixtures that export a full-size SlowFast (`make mar`, or a checkpoint exported for the test).
EXPORTING_FIXTURES = {"built", "server", "non_flat_model_dir", "nonflat_pt"}
# Modules whose every test exports (the exporter's own tests).
EXPORTING_MODULES = {"test_export.py"}


@pytest.fixture(autouse=True, scope="module")
def _unfreeze_after_each_module() -> Iterator[None]:
    """A handler loaded in this process freezes every object alive (handler/heap.py), as a worker
    does once; here the next module's fixtures must stay collectable, so each module ends thawed."""
    yield
    gc.unfreeze()


def pytest_collection_modifyitems(items: list) -> None:
    """Mark every test that exports a full model or uses the exported one (directly or through a
    fixture), so that ``make test-unit`` can leave them out (``-m "not needs_build"``)."""
    for item in items:
        if EXPORTING_FIXTURES & set(getattr(item, "fixturenames", ())) or item.path.name in EXPORTING_MODULES:
            item.add_marker(pytest.mark.needs_build)
