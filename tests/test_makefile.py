"""The Makefile's own rules, run by GNU make in a scratch copy with a stand-in Python that records
what it is asked to do (no export runs): which weights the .pt is exported from (issue 9), and the
activate hook that points a hand-started TorchServe at config.properties (issue 14)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from harness.paths import MODEL, REPO


FAKE_PYTHON = """#!/bin/sh
# Stand-in for .venv/bin/python: log the call, create what --output names.
echo "$*" >> "$(dirname "$0")/../../calls.log"
prev=""; out=""
for a in "$@"; do [ "$prev" = "--output" ] && out="$a"; prev="$a"; done
[ -n "$out" ] && mkdir -p "$(dirname "$out")" && : > "$out"
exit 0
"""


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """The Makefile and the files its rules depend on, with an installed (fake) venv."""
    for name in ["Makefile", "requirements.txt", "requirements-kserve.txt", "requirements-kserve-dev.txt",
                 "model-config.yaml", "client/activate-hook.sh", "handler/contract.py"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, tmp_path / name)
    shutil.copy2(REPO / "requirements-serve.txt", tmp_path)  # requirements.txt includes it
    (tmp_path / "export").mkdir()
    (tmp_path / "export/__main__.py").write_text("")
    (tmp_path / "config.properties").write_text("model_store=model_store\n")
    old = (1_600_000_000, 1_600_000_000)  # sources older than anything built below
    for path in tmp_path.rglob("*"):
        os.utime(path, old)
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(FAKE_PYTHON)
    (bin_dir / "python").chmod(0o755)
    shutil.copy2(Path(sys.executable).parent / "activate", bin_dir / "activate")
    (bin_dir / ".installed").touch()
    os.utime(bin_dir / ".installed", (old[0] + 10, old[1] + 10))
    # The KServe model server's venv, installed too (make install would otherwise create it).
    (tmp_path / ".venv-kserve").mkdir()
    (tmp_path / ".venv-kserve" / ".installed").touch()
    os.utime(tmp_path / ".venv-kserve" / ".installed", (old[0] + 10, old[1] + 10))
    return tmp_path


def make(root: Path, *args: str) -> List[str]:
    """Run make; return the stand-in Python calls it made (``-m export ...`` lines)."""
    log = root / "calls.log"
    log.unlink(missing_ok=True)
    subprocess.run(["make", "--no-print-directory", *args], cwd=root, check=True, capture_output=True, text=True)
    return log.read_text().splitlines() if log.exists() else []


def exports(calls: List[str]) -> List[str]:
    return [c for c in calls if c.startswith("-m export ")]


def stamp(root: Path, model: str = MODEL) -> dict:
    lines = (root / f"build/{model}.export").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines)


def test_the_makefiles_default_model_is_the_one_config_properties_serves() -> None:
    # One default model: `make mar` builds what `make start` (config.properties load_models) serves.
    assert re.findall(r"^MODEL\s*\?=\s*(\S+)$", (REPO / "Makefile").read_text(), re.M) == [MODEL]


def test_checkpoint_given_to_make_mar_is_exported_and_remembered(scratch: Path) -> None:
    (scratch / "a.pyth").write_bytes(b"a")
    # No CHECKPOINT: the exporter's default, the variant's model-zoo weights (random where offline).
    assert exports(make(scratch, "mar")) == [f"-m export --output build/{MODEL}.pt"]
    assert stamp(scratch)["checkpoint"] == "default"
    assert make(scratch, "mar") == []
    # The bug of issue 9: this used to keep the old weights.
    assert exports(make(scratch, "mar", "CHECKPOINT=a.pyth")) == [f"-m export --output build/{MODEL}.pt --checkpoint a.pyth"]
    assert stamp(scratch)["checkpoint"] == "a.pyth"
    assert make(scratch, "mar", "CHECKPOINT=a.pyth") == []
    assert make(scratch, "mar") == [], "a plain `make mar` keeps the checkpoint exported last"
    os.utime(scratch / "a.pyth")  # the checkpoint file changed: re-export from it
    assert exports(make(scratch, "mar")) == [f"-m export --output build/{MODEL}.pt --checkpoint a.pyth"]
    url = "https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics/SLOWFAST_8x8_R50.pyth"
    assert exports(make(scratch, "mar", f"CHECKPOINT={url}")) == [f"-m export --output build/{MODEL}.pt --checkpoint {url}"]
    # a rebuild for another reason (the exporter changed) keeps the remembered weights
    os.utime(scratch / "export/__main__.py")
    assert exports(make(scratch, "mar")) == [f"-m export --output build/{MODEL}.pt --checkpoint {url}"]
    assert exports(make(scratch, "mar", "CHECKPOINT=random")) == [f"-m export --output build/{MODEL}.pt --checkpoint random"]
    assert exports(make(scratch, "export")) == [f"-m export --output build/{MODEL}.pt --checkpoint random"]
    assert exports(make(scratch, "mar", "CHECKPOINT=default")) == [f"-m export --output build/{MODEL}.pt"]


def test_an_expected_sha256_goes_with_its_checkpoint_and_is_forgotten_with_it(scratch: Path) -> None:
    (scratch / "a.pyth").write_bytes(b"a")
    (scratch / "b.pyth").write_bytes(b"b")
    base = f"-m export --output build/{MODEL}.pt"
    assert exports(make(scratch, "mar", "CHECKPOINT=a.pyth", "CHECKPOINT_SHA256=abcdef12")) == [
        f"{base} --checkpoint a.pyth --checkpoint-sha256 abcdef12"]
    assert stamp(scratch)["sha256"] == "abcdef12"
    assert make(scratch, "mar") == [], "the checkpoint and its hash are remembered together"
    os.utime(scratch / "a.pyth")  # re-exported from the same checkpoint: checked again
    assert exports(make(scratch, "mar")) == [f"{base} --checkpoint a.pyth --checkpoint-sha256 abcdef12"]
    # Another checkpoint without a hash: the old hash is not applied to it.
    assert exports(make(scratch, "mar", "CHECKPOINT=b.pyth")) == [f"{base} --checkpoint b.pyth"]
    assert "sha256" not in stamp(scratch)


def test_each_model_has_its_own_file_archive_and_remembered_options(scratch: Path) -> None:
    (scratch / "my.ckpt").write_bytes(b"c")
    (scratch / "classes.txt").write_text("a\nb\n")
    calls = make(scratch, "mar", "MODEL=slowfast_r101")
    assert exports(calls) == ["-m export --output build/slowfast_r101.pt"]
    assert "-m export.archive --model-file build/slowfast_r101.pt --output model_store/slowfast_r101.mar" in calls
    fine_tuned = ["-m export --output build/my_actions.pt --checkpoint my.ckpt --labels classes.txt"]
    assert exports(make(scratch, "mar", "MODEL=my_actions", "CHECKPOINT=my.ckpt", "LABELS=classes.txt")) == fine_tuned
    assert stamp(scratch, "my_actions") == {"checkpoint": "my.ckpt", "labels": "classes.txt", "variant": "", "activation": ""}
    assert make(scratch, "mar", "MODEL=my_actions") == [], "the model's options are remembered"
    os.utime(scratch / "classes.txt")  # the labels changed: re-export
    assert exports(make(scratch, "mar", "MODEL=my_actions")) == fine_tuned
    assert exports(make(scratch, "mar", "MODEL=my_actions", "ACTIVATION=sigmoid")) == [fine_tuned[0] + " --activation sigmoid"]
    assert make(scratch, "mar", "MODEL=slowfast_r101") == [], "another model's options leave this one alone"


def test_dry_run_shows_the_export_and_changes_nothing(scratch: Path) -> None:
    make(scratch, "mar")
    recorded = (scratch / f"build/{MODEL}.export").read_text()
    shown = subprocess.run(["make", "-n", "mar", "CHECKPOINT=b.pyth"], cwd=scratch, check=True,
                           capture_output=True, text=True).stdout
    assert f"-m export --output build/{MODEL}.pt --checkpoint b.pyth" in shown
    assert (scratch / f"build/{MODEL}.export").read_text() == recorded
    assert "-m export" not in subprocess.run(["make", "-n", "mar"], cwd=scratch, check=True,
                                             capture_output=True, text=True).stdout


def _activate(root: Path, script: str, env_extra: dict) -> subprocess.CompletedProcess:
    env = {"HOME": str(root), "PATH": "/usr/bin:/bin", **env_extra}
    return subprocess.run(["bash", "-c", script], cwd=root, env=env, capture_output=True, text=True, check=True)


def test_make_install_makes_activate_point_torchserve_at_the_repo_config(scratch: Path, tmp_path_factory) -> None:
    make(scratch, "install")
    make(scratch, "install")  # idempotent: one hook, not two
    activate = (scratch / ".venv/bin/activate").read_text()
    assert activate.count(">>> slowfast-serve: TorchServe config >>>") == 1
    config = scratch / "config.properties"
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    show = 'echo "TS_CONFIG_FILE=${TS_CONFIG_FILE-<unset>}"'
    done = _activate(scratch, f"source .venv/bin/activate; {show}; cd {elsewhere}; {show}; deactivate; {show}", {})
    assert done.stdout.split() == [f"TS_CONFIG_FILE={config}"] * 2 + ["TS_CONFIG_FILE=<unset>"]
    assert f"slowfast-serve: TS_CONFIG_FILE={config}" in done.stderr and "overrides --ts-config" in done.stderr
    # sourced from elsewhere by its path, and activated twice: still this repo; a previous value comes back
    done = _activate(elsewhere, f"source {scratch}/.venv/bin/activate; source {scratch}/.venv/bin/activate; {show}; "
                                f"deactivate; {show}", {"TS_CONFIG_FILE": "/etc/other.properties"})
    assert done.stdout.split() == [f"TS_CONFIG_FILE={config}", "TS_CONFIG_FILE=/etc/other.properties"]


def _fake_engine(root: Path, daemon_answers: bool) -> dict:
    """A `docker` and a failing `podman` first on PATH (make 4.3's $(shell) does not see the
    Makefile's exported PATH, so the environment's is set): `info` fails without a daemon.
    Returns the environment to run make in; a real engine on this host is never called."""
    (root / ".venv/bin/docker").write_text(
        "#!/bin/sh\n"
        f'[ "$1" = info ] && exit {0 if daemon_answers else 1}\n'
        'echo "docker $*" >> "$(dirname "$0")/../../engine.log"\n'
    )
    (root / ".venv/bin/docker").chmod(0o755)
    (root / ".venv/bin/podman").write_text("#!/bin/sh\nexit 1\n")  # no podman either
    (root / ".venv/bin/podman").chmod(0o755)
    return {**os.environ, "PATH": f"{root / '.venv/bin'}:{os.environ['PATH']}"}


def test_make_image_without_a_container_engine_says_so_and_prints_the_build(scratch: Path) -> None:
    make(scratch, "mar")
    env = _fake_engine(scratch, daemon_answers=False)
    done = subprocess.run(["make", "--no-print-directory", "image"], cwd=scratch, capture_output=True, text=True, env=env)
    assert done.returncode != 0
    assert "No container engine is available here" in done.stdout
    assert "  docker build -f docker/Dockerfile --build-arg VARIANT=cpu -t slowfast-serve:cpu ." in done.stdout
    assert not (scratch / "engine.log").exists()


def test_make_image_builds_with_the_engine_that_answers(scratch: Path) -> None:
    make(scratch, "mar")
    env = _fake_engine(scratch, daemon_answers=True)
    for variant in ("cpu", "gpu"):
        subprocess.run(["make", "--no-print-directory", "image", f"IMAGE_VARIANT={variant}"], cwd=scratch,
                       check=True, capture_output=True, env=env)
    assert (scratch / "engine.log").read_text().splitlines() == [
        "docker build -f docker/Dockerfile --build-arg VARIANT=cpu -t slowfast-serve:cpu .",
        "docker build -f docker/Dockerfile --build-arg VARIANT=gpu -t slowfast-serve:gpu .",
    ]


def test_int8_precision_and_calibration_are_exported_and_remembered(scratch: Path) -> None:
    calls = make(scratch, "mar", "PRECISION=int8", "CALIBRATION=clips", "INT8_MIN_AGREEMENT=0.8")
    assert exports(calls) == [f"-m export --output build/{MODEL}.pt --precision int8 --calibration clips --int8-min-agreement 0.8"]
    assert stamp(scratch)["precision"] == "int8" and stamp(scratch)["calibration"] == "clips"
    assert make(scratch, "mar") == [], "a plain `make mar` keeps the int8 export"
    # back to fp32 only: said once, then remembered
    assert exports(make(scratch, "mar", "PRECISION=fp32")) == [f"-m export --output build/{MODEL}.pt --precision fp32 --calibration clips"]
    assert make(scratch, "mar") == []
