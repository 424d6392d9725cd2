"""Model-only forward of every CPU runtime and precision, side by side in one process (issue 10).

Each variant is loaded through ``load_runtime`` as a worker would load it (its name says what
actually runs, so a silent fallback shows), then the repetitions are interleaved across the
variants so that a change in the machine's load hits them all alike. Also timed: OpenVINO's
conversion of the .pt and the read of the cached IR (what a worker start costs with and without
the cache).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch

from harness.inproc import InProcessHandler
from bench.util import progress, ratio, summary
from handler.runtime import load_runtime

BASELINE = "torchscript-fp32 mb1"
# (label, micro-batch, option overrides): today's frozen TorchScript, OpenVINO at both precisions,
# and the two ways to run two views at once (one batch-2 request; two streams of one view each).
VARIANTS: List[Tuple[str, int, Dict[str, Any]]] = [
    (BASELINE, 1, {"cpu_runtime": "torchscript", "optimize": True}),
    ("openvino-fp32 mb1", 1, {"cpu_runtime": "openvino", "cpu_precision": "fp32", "cpu_streams": 1}),
    ("openvino-bf16 mb1", 1, {"cpu_runtime": "openvino", "cpu_precision": "bf16", "cpu_streams": 1}),
    ("openvino-bf16 mb2", 2, {"cpu_runtime": "openvino", "cpu_precision": "bf16", "cpu_streams": 1}),
    ("openvino-bf16 mb2 2-streams", 2, {"cpu_runtime": "openvino", "cpu_precision": "bf16", "cpu_streams": 2}),
]


def _conversion_times(pt: Path) -> Dict[str, float]:
    """Seconds to convert the .pt to OpenVINO IR (cold, as a first worker) and to read it back cached."""
    from handler.runtime_openvino import cached_model

    with tempfile.TemporaryDirectory(prefix="slowfast-bench-ir-") as root:
        started = time.perf_counter()
        cached_model(pt, Path(root))
        cold = time.perf_counter() - started
        started = time.perf_counter()
        cached_model(pt, Path(root))
        warm = time.perf_counter() - started
    progress(f"  OpenVINO conversion {cold:.1f} s; cached IR read {warm:.1f} s")
    return {"convert_s": round(cold, 2), "cached_read_s": round(warm, 2)}


def compare(handler: InProcessHandler, pt: Path, reps: int, warmup: int, quick: bool = False) -> Dict[str, Any]:
    """Forward ms (median of ``reps`` after ``warmup``) per variant, and ms per view (JSON ``ms_per_clip``)."""
    base = dataclasses.replace(handler.handler.options, warmup=False)
    variants = VARIANTS[:3] if quick else VARIANTS
    loaded: Dict[str, Tuple[Any, int, float]] = {}
    for label, batch, overrides in variants:
        started = time.perf_counter()
        runtime = load_runtime(pt, torch.device("cpu"), dataclasses.replace(base, **overrides), workers=1)
        loaded[label] = (runtime, batch, time.perf_counter() - started)
        progress(f"  loaded {label} as {runtime.name} in {loaded[label][2]:.1f} s")
    inputs = {batch: handler.dummy_pathways(batch) for _, batch, _ in variants}
    times: Dict[str, List[float]] = {label: [] for label in loaded}
    for rep in range(warmup + reps):
        for label, (runtime, batch, _) in loaded.items():
            started = time.perf_counter()
            runtime.infer(inputs[batch])
            if rep >= warmup:
                times[label].append((time.perf_counter() - started) * 1000)
    rows: Dict[str, Any] = {}
    for label, (runtime, batch, load_s) in loaded.items():
        forward = summary(times[label])
        rows[label] = {
            "runtime": runtime.name, "micro_batch": batch, "streams": len(getattr(runtime, "requests", [None])),
            "forward_ms": forward, "ms_per_clip": round(forward["median"] / batch, 1), "load_s": round(load_s, 2),
        }
    baseline = rows[BASELINE]["ms_per_clip"]
    for label, row in rows.items():
        row["vs_baseline"] = ratio(row["ms_per_clip"], baseline)
        progress(f"  {label}: {row['forward_ms']['median']:.0f} ms / {row['micro_batch']} view(s) "
                 f"= {row['ms_per_clip']:.0f} ms/view ({row['vs_baseline']:.2f}x frozen TorchScript)")
    default = handler.runtime.name
    default_row = next((label for label, row in rows.items() if row["runtime"] == default and row["micro_batch"] == 1), None)
    return {
        "variants": rows,
        "baseline": BASELINE,
        "default_runtime": default,
        "default_variant": default_row,
        **({} if quick else _conversion_times(pt)),
    }
