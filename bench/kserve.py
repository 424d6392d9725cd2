"""KServe section: what the pod's model server adds to a request, over the TorchServe behind it.

Starts the pod as tests/test_kserve.py rehearses it (``harness.kserve_pod.KServePod``: the layout
``make kserve`` builds, the ServingRuntime's command) and sends the same video, round after round,
in four ways, interleaved so that drift in the machine's load hits each alike:

- ``direct``: raw bytes to TorchServe's ``/predictions/<model>`` (what ``python -m client`` sends);
- ``torchserve_v1``: the KServe v1 JSON body (base64 video) to TorchServe's own ``:predict`` route;
- ``kserve_v1`` and ``kserve_v2``: the v1 / v2 JSON bodies to the model server (REST), which forwards
  them to that route.

The figure is ``kserve_v1`` p50 / ``direct`` p50 (goal <= 1.1); ``kserve_v1`` / ``torchserve_v1``
isolates the proxy hop from the cost of base64 JSON itself.
"""

from __future__ import annotations

import base64
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import requests

from bench.util import progress, ratio, summary

GOAL = 1.1
WAYS = ("direct", "torchserve_v1", "kserve_v1", "kserve_v2")


def run(mar: Path, video: Dict[str, Any], reps: int, warmup: int) -> Dict[str, Any]:
    """p50 of each way over ``reps`` interleaved rounds (after ``warmup``), and the ratios."""
    from harness.kserve_pod import KServePod

    data = Path(video["path"]).read_bytes()
    encoded = base64.b64encode(data).decode()
    with tempfile.TemporaryDirectory(prefix="slowfast-kserve-") as tmp:
        pod = KServePod(mar, Path(tmp))
        progress(f"kserve: starting the model server and its TorchServe ({mar.name}) ...")
        started = time.perf_counter()
        with pod:
            start_s = time.perf_counter() - started
            v1 = {"instances": [{"data": encoded}]}
            v2 = {"inputs": [{"name": "video", "shape": [1], "datatype": "BYTES", "data": [encoded]}]}
            send: Dict[str, Callable[[], requests.Response]] = {
                "direct": lambda: requests.post(pod.predictions_url, data=data, timeout=300,
                                                headers={"Content-Type": "application/octet-stream"}),
                "torchserve_v1": lambda: requests.post(f"{pod.inference_url}/v1/models/{pod.model_name}:predict",
                                                       json=v1, timeout=300),
                "kserve_v1": lambda: requests.post(f"{pod.url}/v1/models/{pod.model_name}:predict", json=v1, timeout=300),
                "kserve_v2": lambda: requests.post(f"{pod.url}/v2/models/{pod.model_name}/infer", json=v2, timeout=300),
            }
            times: Dict[str, List[float]] = {way: [] for way in WAYS}
            progress(f"kserve: {video['name']}, {reps} rounds of {', '.join(WAYS)} (after {warmup} warm-up)")
            for round_index in range(warmup + reps):
                for way in WAYS:
                    t0 = time.perf_counter()
                    reply = send[way]()
                    elapsed_ms = (time.perf_counter() - t0) * 1000.0
                    if reply.status_code != 200:
                        raise RuntimeError(f"kserve bench: {way} answered {reply.status_code}: {reply.text[:300]}")
                    if round_index >= warmup:
                        times[way].append(elapsed_ms)
    figures = {way: summary(values) for way, values in times.items()}
    return {
        "video": video["name"], "bytes": len(data), "server_start_s": round(start_s, 1), "ms": figures,
        "kserve_v1_over_direct": ratio(figures["kserve_v1"]["median"], figures["direct"]["median"]),
        "kserve_v2_over_direct": ratio(figures["kserve_v2"]["median"], figures["direct"]["median"]),
        "kserve_v1_over_torchserve_v1": ratio(figures["kserve_v1"]["median"], figures["torchserve_v1"]["median"]),
        "goal": GOAL,
    }


def render(result: Dict[str, Any]) -> List[str]:
    lines = [f"KServe model server vs TorchServe alone ({result['video']}, {result['bytes']} bytes; "
             f"server start {result['server_start_s']} s)"]
    for way in WAYS:
        figure = result["ms"][way]
        lines.append(f"  {way:<14} p50 {figure['median']:9.1f} ms  (min {figure['min']:.1f}, max {figure['max']:.1f}, "
                     f"n {figure['n']})")
    verdict = "met" if result["kserve_v1_over_direct"] <= result["goal"] else "NOT met"
    lines.append(f"  kserve v1 / direct p50: {result['kserve_v1_over_direct']:.3f}x (goal <= {result['goal']}x: {verdict}); "
                 f"v2 / direct {result['kserve_v2_over_direct']:.3f}x; "
                 f"proxy hop alone (kserve v1 / TorchServe v1) {result['kserve_v1_over_torchserve_v1']:.3f}x")
    return lines
