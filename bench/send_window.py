"""Send-window section: ``python -m client``'s way of sending a default request (the cut its window
needs, client/window_cut.py) against the whole file, on the cost-growth videos (10 s .. 600 s,
720p), through the benchmark's real TorchServe.

Per video and way: the client's time to cut (reading the file, finding the keyframe, remuxing,
checking the cut's clock), the bytes sent, and the wall time from the file's bytes to the answer
(cut included). The goal (issue 26): a 600 s video's answer within 1.3x of the 10 s one's.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List

from bench.util import progress, ratio, shortest_and_longest, summary, target

GOAL = 1.3
WAYS = ("cut", "whole")


def _one(served: Any, data: bytes, whole_file: bool) -> Dict[str, Any]:
    from client.window_cut import Cut, for_request

    started = time.perf_counter()
    sent = for_request(data, {}, whole_file=whole_file)
    cut_ms = (time.perf_counter() - started) * 1000
    body, fields = (sent.data, sent.fields) if isinstance(sent, Cut) else (data, {})
    answer = served.predict(body, fields)
    return {"cut_ms": cut_ms, "e2e_ms": (time.perf_counter() - started) * 1000, "bytes": len(body),
            "sent": sent.describe(), "windows": answer["windows"], "duration_s": answer["video"]["duration_s"],
            "top": answer["predictions"][0]["index"]}


def measure(served: Any, videos: List[Dict[str, Any]], reps: int, warmup: int = 1) -> Dict[str, Any]:
    """Each video, each way (``cut``, ``whole``), ``warmup`` + ``reps`` times, interleaved."""
    from client.window_cut import _server_clock  # imports the server's reader (torch) before timing

    _server_clock  # noqa: B018 (the import is the point)
    out: Dict[str, Any] = {"goal": GOAL, "videos": {}}
    for video in videos:
        data = video["path"].read_bytes()
        progress(f"send_window: {video['name']} ({len(data) / 2**20:.1f} MB, {warmup} warm-up + {reps} requests a way)")
        runs: Dict[str, List[Dict[str, Any]]] = {way: [] for way in WAYS}
        for rep in range(warmup + reps):
            for way in WAYS:
                one = _one(served, data, whole_file=way == "whole")
                if rep >= warmup:
                    runs[way].append(one)
        cut, whole = runs["cut"][-1], runs["whole"][-1]
        out["videos"][video["name"]] = {
            "seconds": video.get("seconds"), "file_bytes": len(data),
            **{way: {"e2e_ms": summary([r["e2e_ms"] for r in runs[way]]),
                     "cut_ms": summary([r["cut_ms"] for r in runs[way]]),
                     "bytes_sent": runs[way][-1]["bytes"], "sent": runs[way][-1]["sent"]} for way in WAYS},
            # The same answer either way (the tests check it exactly; here a sanity line).
            "same_answer": cut["windows"] == whole["windows"] and cut["duration_s"] == whole["duration_s"]
            and cut["top"] == whole["top"],
        }
        progress(f"  cut {out['videos'][video['name']]['cut']['e2e_ms']['median']:.0f} ms "
                 f"({cut['bytes'] / 2**20:.2f} MB sent), whole {out['videos'][video['name']]['whole']['e2e_ms']['median']:.0f} ms")
    ends = shortest_and_longest(out)
    if ends:
        first, last = ends
        for way in WAYS:
            out[f"{way}_ratio"] = ratio(last[way]["e2e_ms"]["median"], first[way]["e2e_ms"]["median"])
    return out


def targets(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The goal as a row of the benchmark's targets."""
    result = results.get("http", {}).get("send_window")
    if not result or "cut_ratio" not in result:
        return []
    short, long_ = result["videos"][result["shortest"]], result["videos"][result["longest"]]
    return [target(
        f"sent window: answer time [{short['seconds']:g} s -> {long_['seconds']:g} s video]", result["cut_ratio"],
        "<=", GOAL, f"{long_['cut']['e2e_ms']['median']:.0f} ms / {short['cut']['e2e_ms']['median']:.0f} ms "
                    f"(whole file: {result['whole_ratio']:.2f}x)",
        f"sent {long_['cut']['bytes_sent'] / 2**20:.2f} of {long_['file_bytes'] / 2**20:.1f} MB; "
        f"client cut {long_['cut']['cut_ms']['median']:.0f} ms",
    )]


def render(results: Dict[str, Any]) -> List[str]:
    result = results.get("http", {}).get("send_window")
    if not result:
        return []
    lines = ["", "Send the window, not the file: a default request as python -m client sends it (cut) and --whole-file"]
    header = f"  {'video':<10} {'way':<6} {'MB sent':>8} {'client cut ms':>13} {'answer ms':>10}  same answer"
    lines.append(header)
    for name, v in result["videos"].items():
        for way in WAYS:
            lines.append(f"  {v['seconds']:<8g} s {way:<6} {v[way]['bytes_sent'] / 2**20:8.2f} "
                         f"{v[way]['cut_ms']['median']:13.1f} {v[way]['e2e_ms']['median']:10.0f}  {v['same_answer']}")
    if "cut_ratio" in result:
        verdict = "met" if result["cut_ratio"] <= GOAL else "NOT met"
        lines.append(f"  longest / shortest answer time: cut {result['cut_ratio']:.3f}x (goal <= {GOAL}x: {verdict}), "
                     f"whole file {result['whole_ratio']:.3f}x")
    return lines
