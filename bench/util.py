"""Small helpers shared by the benchmark sections: progress to stderr, statistics, a target entry.

Sections import from here, never from bench/report.py (which imports them to collect their
targets and tables).
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple


_T0 = time.monotonic()


def progress(message: str) -> None:
    print(f"[bench {time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(values: Sequence[float]) -> Dict[str, float]:
    """Median (the figure compared), min, max and sample count of timings in ms."""
    values = list(values)
    if not values:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "n": len(values),
    }


def ratio(numerator: float, denominator: float) -> float:
    if not denominator or math.isnan(denominator) or math.isnan(numerator):
        return float("nan")
    return round(numerator / denominator, 4)


# The CPU flags that decide which precision runs at its rate (bf16 natively, int8 with VNNI/AMX).
PRECISION_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")


def flags_text(flags: Optional[Sequence[str]]) -> str:
    """``"has avx2 fma; lacks avx512f ..."`` for the ``PRECISION_FLAGS`` a run's machine had."""
    if flags is None:
        return "not recorded"
    lacks = [f for f in PRECISION_FLAGS if f not in flags]
    return f"has {' '.join(flags) or 'none of them'}; lacks {' '.join(lacks) or 'none'}"


def machine() -> Dict[str, object]:
    import torch

    from handler.runtime_openvino import cpu_flags

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    return {
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "precision_flags": [f for f in PRECISION_FLAGS if f in cpu_flags()],
        "torch_threads": torch.get_num_threads(),
        "load_avg_at_start": [round(x, 2) for x in load],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def fmt_ms(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:,.1f}"


def target(name: str, value: Optional[float], op: str, limit: float, detail: str, bound: str = "") -> Dict[str, Any]:
    """One target: ``value`` ``op`` (``<=`` or ``>=``) ``limit`` passes (True), misses (False, keeping
    ``bound``: what bounds the figure) or was not measured (None: a missing or NaN value)."""
    ok = None
    if value is not None and not (isinstance(value, float) and math.isnan(value)):
        ok = value <= limit if op == "<=" else value >= limit
    entry = {"name": name, "value": value, "op": op, "limit": limit, "pass": ok, "detail": detail}
    if ok is False and bound:
        entry["bound"] = bound
    return entry


def shortest_and_longest(out: Dict[str, Any]) -> Optional[Tuple[Dict[str, Any], Dict[str, Any]]]:
    """For a section's ``out["videos"]`` (name -> figures, shortest video first): sets
    ``out["shortest"]``/``out["longest"]`` to their names and returns their figures; None for
    fewer than two videos."""
    names = list(out["videos"])
    if len(names) < 2:
        return None
    out["shortest"], out["longest"] = names[0], names[-1]
    return out["videos"][names[0]], out["videos"][names[-1]]
