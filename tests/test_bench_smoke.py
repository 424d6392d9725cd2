"""Smoke test of the benchmark: `python -m bench --quick` runs end to end and writes its JSON.

It asserts structure and sanity only, never timings: figures from a shared test machine mean
nothing, and the targets are the benchmark's own business (`make bench`, run alone).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import pytest

from harness.paths import REPO, TIMELINE_MODEL

# Integration: starts its own TorchServe on free loopback ports. Slow (make test-all): the quick
# bench takes ~2.5 minutes, an eighth of the default run's ~20 minutes; `make bench` runs the same code.
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def quick_run(built: Dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=1200,
    )
    assert proc.returncode == 0, f"bench failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    assert "Targets" in proc.stdout, proc.stdout[-2000:]
    return json.loads(out.read_text())


def test_meta_and_targets(quick_run: Dict[str, Any]) -> None:
    meta = quick_run["meta"]
    assert meta["mode"] == "quick"
    assert meta["machine"]["cores"] >= 1 and meta["machine"]["date_utc"]
    assert meta["synthetic_720p"]["width"] == 1280 and meta["synthetic_720p"]["gop"] == 250
    targets = quick_run["targets"]
    assert targets, "no targets evaluated"
    for target in targets:
        assert {"name", "value", "op", "limit", "pass", "detail"} <= set(target)
        if target["pass"] is False:
            assert target.get("bound"), f"a missed target must say what bounds it: {target['name']}"
    names = " ".join(t["name"] for t in targets)
    for expected in ("decode+preprocess / forward", "speed-up vs reference", "HTTP e2e",
                     "served throughput", "time growth", "peak RSS growth", "default CPU runtime forward",
                     "HTTP p50 / frozen-TorchScript forward", "worker start to READY", "sent window"):
        assert expected in names


def test_stages_and_reference(quick_run: Dict[str, Any]) -> None:
    clips = quick_run["stages"]["clips"]
    kinds = {c.get("kind") for c in clips.values()}
    assert "synthetic-720p" in kinds
    for name, clip in clips.items():
        stages = clip["stages_ms"]
        for key in ("decode", "preprocess", "inference", "handler_total"):
            assert _positive(stages[key]["median"]), (name, key)
        assert stages["postprocess"]["median"] >= 0
        parts = sum(stages[k]["median"] for k in ("decode", "preprocess", "inference"))
        assert parts <= stages["handler_total"]["median"] * 1.001 + 0.1, name  # stages inside the total
        assert _positive(clip["model_forward_ms"]["median"])
        assert _positive(clip["reference_decode_preprocess_ms"]["median"]), clip.get("reference_error")
        assert _positive(clip["speedup_vs_reference"]) and _positive(clip["decode_preprocess_over_forward"])
        assert clip["video"]["frames_decoded"] >= 1
    model = quick_run["stages"]["model_only"]
    assert _positive(model["best_clips_per_s"]) and str(model["best_micro_batch"]) in model["forward_ms"]


def test_runtimes_side_by_side(quick_run: Dict[str, Any]) -> None:
    runtimes = quick_run["runtimes"]
    rows = runtimes["variants"]
    assert rows[runtimes["baseline"]]["runtime"] == "torchscript-fp32"
    assert {row["runtime"] for row in rows.values()} >= {"torchscript-fp32", "openvino-fp32"}
    assert rows[runtimes["default_variant"]]["runtime"] == runtimes["default_runtime"]
    for row in rows.values():
        assert _positive(row["forward_ms"]["median"]) and _positive(row["vs_baseline"]) and _positive(row["load_s"])


def test_served_sections(quick_run: Dict[str, Any]) -> None:
    http = quick_run["http"]
    assert http["latency"]
    for clip in http["latency"].values():
        assert _positive(clip["e2e_ms"]["p50"]) and clip["e2e_ms"]["p95"] >= clip["e2e_ms"]["p50"]
        # The client's wall time contains the handler's.
        assert clip["e2e_ms"]["p50"] >= clip["handler_ms"]["handler_total"]["median"]
    tp = http["throughput"]
    assert _positive(tp["clips_per_s"]) and tp["requests"] == tp["clients"] * quick_run["meta"]["args"]["per_client"]
    growth = http["growth"]
    assert len(growth["videos"]) == 2
    for video in growth["videos"].values():
        assert _positive(video["worker_peak_rss_mb"]) and video["worker_peak_rss_mb"] >= 100
        assert _positive(video["e2e_ms"]["median"])
    assert _positive(growth["time_ratio"]) and _positive(growth["peak_rss_ratio"])


def test_timeline_and_embedding_sections(quick_run: Dict[str, Any]) -> None:
    timeline = quick_run["http"]["timeline"]
    # 8 s at the default stride (64/30 s): 3 windows, a line each plus the full answer.
    assert timeline["windows"] == 3 and timeline["lines"] == 4
    # One pass: no frame decoded twice, and the windows span most of the video's frames.
    assert timeline["frames_sampled"] / 2 <= timeline["frames_decoded"] <= timeline["video_frames"] == 240
    assert 0 < timeline["first_line_s"] <= timeline["total_s"]
    assert _positive(timeline["decode_preprocess_over_forwards"]) and _positive(timeline["peak_rss_ratio"])
    embedding = quick_run["http"]["embedding"]
    assert _positive(embedding["labels"]["p50"]) and _positive(embedding["embedding_over_labels"])
    names = " ".join(t["name"] for t in quick_run["targets"])
    for expected in ("timeline decode+preprocess", "timeline worker peak RSS", "timeline single pass",
                     "embedding request / labels request"):
        assert expected in names


def test_held_section(quick_run: Dict[str, Any]) -> None:
    held = quick_run["http"]["held"]
    # The long video's timeline is refused by the clip registration, before decoding.
    assert held["clip_registration_refusal"]["status"] == 413
    assert TIMELINE_MODEL in held["clip_registration_refusal"]["message"]
    assert held["abandoned"]["windows_read"] >= 1  # the timeline registration streamed it
    assert _positive(held["after_abandoned_s"]) and _positive(held["loaded_p95_over_alone"])
    names = " ".join(t["name"] for t in quick_run["targets"])
    assert "abandoned" in names and "long timelines streaming" in names


def test_kserve_section(quick_run: Dict[str, Any]) -> None:
    # The pod's model server and its own TorchServe: every way answered, the ratios are figures.
    kserve = quick_run["kserve"]
    for way in ("direct", "torchserve_v1", "kserve_v1", "kserve_v2"):
        assert kserve["ms"][way]["n"] == 1 and _positive(kserve["ms"][way]["median"])
    assert _positive(kserve["kserve_v1_over_direct"]) and kserve["goal"] == 1.1
