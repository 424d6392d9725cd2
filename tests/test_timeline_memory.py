"""A timeline's memory does not grow with its length (issue 11): a fresh worker-like process.

The handler runs in a subprocess (fresh heap, its own /proc/self/status): one default request on a
60 s video, then a timeline over the whole video (28 windows). The timeline's peak resident memory
(VmHWM, reset before it) must stay within a few windows' worth of the single clip's. A control
run without the handler's heap setting (handler/heap.py) prints the growth this guards against.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest

from tests.synth import make_video

REPO = Path(__file__).resolve().parent.parent
# Growth allowed over the single clip's peak (measured: 0-1 MB; without the fix 24-257 MB).
ALLOWED_GROWTH_MB = 60

if not sys.platform.startswith("linux"):
    pytest.skip("VmHWM and clear_refs are Linux /proc features", allow_module_level=True)

SCRIPT = r"""
import json, os, sys
from pathlib import Path
import handler.slowfast_handler as module
from bench.inproc import InProcessHandler

def peak_mb():
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024

if os.environ.get("NO_HEAP_FIX"):
    module.fix_mmap_threshold = lambda: False
handler = InProcessHandler(Path(sys.argv[1]) / "slowfast_r50.pt")
video = Path(sys.argv[2]).read_bytes()
handler.handle(video)
Path("/proc/self/clear_refs").write_text("5")
handler.handle(video)
single = peak_mb()
Path("/proc/self/clear_refs").write_text("5")
handler.handle(video, {"timeline": "true", "stream": "true"})
print(json.dumps({"single_peak_mb": single, "timeline_peak_mb": peak_mb()}))
"""


@pytest.fixture(scope="module")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("timeline-memory") / "60s_640x360.mp4"
    path.write_bytes(make_video(frames=1800, width=640, height=360, gop=250, options={"preset": "ultrafast"}))
    return path


def peaks(model_dir: Path, video: Path, heap_fix: bool) -> Dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if not heap_fix:
        env["NO_HEAP_FIX"] = "1"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(model_dir), str(video)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_timeline_peaks_like_a_single_clip(built, long_video: Path, tmp_path: Path) -> None:
    os.link(built["pt"], tmp_path / "slowfast_r50.pt")
    with_fix = peaks(tmp_path, long_video, heap_fix=True)
    growth = with_fix["timeline_peak_mb"] - with_fix["single_peak_mb"]
    assert growth < ALLOWED_GROWTH_MB, with_fix
    # For comparison only: without the fixed threshold the heap usually grows ~200-260 MB here, but
    # how much depends on which allocator arena each thread's buffers land in (24 MB seen once),
    # so it is printed, not asserted.
    without = peaks(tmp_path, long_video, heap_fix=False)
    print(f"\n[memory] 28-window timeline over a single clip's peak: {growth:.0f} MB with the fixed mmap "
          f"threshold, {without['timeline_peak_mb'] - without['single_peak_mb']:.0f} MB without")
