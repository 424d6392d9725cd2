"""A long run without growth (issue 25, point 3): a real TorchServe under a mix of requests for a
stated time, watched for errors, latency drift, memory growth and leaked file descriptors.

``clients`` threads send, round-robin each from its own offset, real videos (200), bad inputs
(truncated, random bytes, a concat playlist, an audio-only file, an empty body: each its 4xx) and
streamed timelines (to the timeline registration when the server has one). A sampler records each
worker's RSS and open file descriptors every ``sample_s``. PyAV/FFmpeg leaks show only over
thousands of requests, hence ``make soak`` (30 min by default); ``make test-all`` runs 3 minutes.

Targets: no 5xx (none is provoked); after the warm-up (the first ``WARMUP_SHARE`` of the run), the
worker's RSS grows less than ``RSS_SLOPE_LIMIT_MB`` per 1,000 requests and its open file descriptors
stay flat (``FD_GROWTH_LIMIT``). The slope is fitted to the RSS *floor*: the lowest RSS sampled in each
stretch of ``FLOOR_REQUESTS`` requests, against requests answered. RSS at a random instant carries the
frames of whichever video is being decoded (tens of MB, measured: a +-15 MB swing on 12 minutes), which
no run of a few thousand requests can average away; what a leak keeps, the floor keeps too. The
slope of the raw samples is printed beside it.

``python -m bench.soak --minutes 30 --clients 2`` prints the report; ``--json`` writes it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import psutil

from bench.util import percentile, progress

RSS_SLOPE_LIMIT_MB = 1.0  # per 1,000 requests, after the warm-up
FD_GROWTH_LIMIT = 2  # open descriptors the worker may hold beyond the warm-up's most
WARMUP_SHARE = 0.2
FLOOR_REQUESTS = 100  # requests per stretch whose lowest RSS sample is one point of the floor
MAPS_EVERY = 10  # samples between reads of where the RSS lies (/proc/PID/smaps: milliseconds, not free)
# Where a worker's RSS lies: glibc's main arena (brk), anonymous mappings (other threads' arenas,
# blocks over the mmap threshold, OpenVINO's and torch's buffers), mapped files (libraries, weights).
MAP_KINDS = ("heap", "anon", "files")
BUCKETS = 6  # rows of the over-time table
TIMELINE_VIDEO = "ii__realshort.mp4"  # short: a timeline of a few windows


@dataclass(frozen=True)
class RequestKind:
    name: str
    body: bytes
    headers: Dict[str, str]
    expect: str  # "200" or "4xx"
    model: Optional[str] = None
    stream: bool = False


@dataclass
class Record:
    t: float  # seconds from the start, at completion
    kind: str
    status: int
    ms: float
    expected: bool


@dataclass
class Sample:
    t: float
    answered: int
    rss_mb: Dict[int, float] = field(default_factory=dict)
    fds: Dict[int, int] = field(default_factory=dict)
    maps_mb: Dict[int, Dict[str, float]] = field(default_factory=dict)  # pid -> MAP_KINDS -> MB, some samples


def map_kind(path: str) -> str:
    """Which of ``MAP_KINDS`` (or "other": stacks, vdso) a mapping's path (psutil's grouped
    ``memory_maps``) counts in."""
    if path == "[heap]":
        return "heap"
    if path.startswith("/"):
        return "files"
    if path in ("", "[anon]") or path.startswith("[anon:"):
        return "anon"
    return "other"


def request_mix(videos: Path, timeline_model: Optional[str]) -> List[RequestKind]:
    """What the clients send: every real video, the bad inputs, a streamed timeline."""
    from harness.synth import make_video

    kinds: List[RequestKind] = []
    real = sorted(p for p in videos.iterdir() if p.suffix != ".tsv") if videos.is_dir() else []
    for path in real:
        audio_only = path.suffix == ".mp3"
        kinds.append(RequestKind(f"video {path.name}", path.read_bytes(), {}, "4xx" if audio_only else "200"))
    sample = real[0].read_bytes() if real else make_video(frames=60, width=160, height=120)
    if not real:
        kinds.append(RequestKind("video synthesized", sample, {}, "200"))
    rng = random.Random(0)
    kinds += [
        RequestKind("bad truncated", sample[:2048], {}, "4xx"),
        RequestKind("bad random bytes", bytes(rng.randrange(256) for _ in range(50_000)), {}, "4xx"),
        RequestKind("bad playlist", b"ffconcat version 1.0\nfile 'model.mp4'\n", {}, "4xx"),
        RequestKind("bad option", sample, {"topk": "-3"}, "4xx"),
        RequestKind("bad empty", b"", {}, "4xx"),
    ]
    timeline = videos / TIMELINE_VIDEO if (videos / TIMELINE_VIDEO).is_file() else None
    body = timeline.read_bytes() if timeline else make_video(frames=150, width=160, height=120)
    kinds.append(RequestKind("timeline streamed", body, {"timeline": "true", "stream": "true"}, "200",
                             model=timeline_model, stream=True))
    return kinds


def send_with(served: Any) -> Callable[[RequestKind], int]:
    """A sender for ``run`` through bench.served.Served (its keep-alive sessions and token)."""
    return lambda kind: _status(served.post(kind.body, kind.headers, stream=kind.stream, model=kind.model), kind)


def _status(reply: Any, kind: RequestKind) -> int:
    try:
        if kind.stream:
            last = b""
            for line in reply.iter_lines():
                last = line or last
            # A streamed answer is 200 from its first line; its last line says how it ended.
            if reply.status_code == 200 and last and b'"code"' in last and b'"reason"' in last:
                return int(json.loads(last).get("code", 500))
        else:
            reply.content  # noqa: B018 - read the whole answer, as a client does
        return reply.status_code
    finally:
        reply.close()


def worker_pids_of(server: Any, models: Tuple[str, ...]) -> Callable[[], List[int]]:
    """The pids of the workers of ``models`` on a LocalTorchServe, asked anew at each sample."""
    def pids() -> List[int]:
        found = []
        for model in models:
            found += [int(w["pid"]) for w in server.workers(model) if w.get("pid")]
        return found
    return pids


def _sample(pids: Callable[[], List[int]], t: float, answered: int, maps: bool = False) -> Sample:
    sample = Sample(t, answered)
    for pid in pids():
        try:
            process = psutil.Process(pid)
            sample.rss_mb[pid] = process.memory_info().rss / 2**20
            sample.fds[pid] = process.num_fds()
            if maps:
                kinds = dict.fromkeys(MAP_KINDS + ("other",), 0.0)
                for region in process.memory_maps(grouped=True):
                    kinds[map_kind(region.path)] += region.rss / 2**20
                sample.maps_mb[pid] = kinds
        except psutil.Error:
            continue
    return sample


def run(send: Callable[[RequestKind], int], pids: Callable[[], List[int]], videos: Path, seconds: float,
        clients: int = 2, sample_s: float = 1.0, timeline_model: Optional[str] = None,
        on_progress: Callable[[str], None] = progress) -> Dict[str, Any]:
    """Send the mix for ``seconds`` from ``clients`` threads (``send(kind)`` -> HTTP status), sampling
    the workers ``pids()`` names; the report (see ``report``)."""
    kinds = request_mix(videos, timeline_model)
    records: List[Record] = []
    samples: List[Sample] = []
    lock = threading.Lock()
    stop = threading.Event()
    started = time.monotonic()

    def client(offset: int) -> None:
        index = offset
        while not stop.is_set():
            kind = kinds[index % len(kinds)]
            index += 1
            sent = time.monotonic()
            try:
                status = send(kind)
            except Exception:  # noqa: BLE001 - a dropped connection is an outcome to count
                status = 599
            done = time.monotonic()
            ok = status == 200 if kind.expect == "200" else 400 <= status < 500
            with lock:
                records.append(Record(done - started, kind.name, status, (done - sent) * 1000, ok))

    threads = [threading.Thread(target=client, args=(i * len(kinds) // clients,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    next_report = started + 60
    while time.monotonic() - started < seconds:
        with lock:
            answered = len(records)
        samples.append(_sample(pids, time.monotonic() - started, answered, maps=len(samples) % MAPS_EVERY == 0))
        if time.monotonic() >= next_report:
            next_report += 60
            on_progress(f"soak: {time.monotonic() - started:.0f}/{seconds:.0f} s, {answered} requests")
        time.sleep(min(sample_s, max(0.0, seconds - (time.monotonic() - started))))
    stop.set()
    for thread in threads:
        thread.join(timeout=600)
    with lock:
        samples.append(_sample(pids, time.monotonic() - started, len(records), maps=True))
        return report(list(records), samples, seconds, clients)


def _fitted(points: List[Tuple[float, float]]) -> Optional[float]:
    """``_slope_per_1000`` rounded for the report; None (JSON null, "not fitted") under 3 points."""
    slope = _slope_per_1000(points)
    return None if slope != slope else round(slope, 3)


def _slope_text(slope: Optional[float], unit: str = "") -> str:
    return "not fitted (under 3 stretches: a longer run)" if slope is None else f"{slope:+}{unit}"


def _slope_per_1000(points: List[Tuple[float, float]]) -> float:
    """Least-squares slope of y against x, times 1000 (MB per 1,000 requests); NaN under 3 points."""
    if len(points) < 3:
        return float("nan")
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var_x = sum((x - mean_x) ** 2 for x, _ in points)
    if var_x == 0:
        return float("nan")
    return 1000 * sum((x - mean_x) * (y - mean_y) for x, y in points) / var_x


def rss_floor(points: List[Tuple[float, float]], per: int = FLOOR_REQUESTS) -> List[Tuple[float, float]]:
    """``(requests answered, RSS MB)`` samples -> one ``(mid-stretch requests, lowest RSS)`` per full
    stretch of ``per`` requests (a partial last stretch is dropped: fewer samples, a higher floor)."""
    if not points:
        return []
    start = points[0][0]
    stretches: Dict[int, List[Tuple[float, float]]] = {}
    for answered, rss in points:
        stretches.setdefault(int((answered - start) // per), []).append((answered, rss))
    last_full = int((points[-1][0] - start) // per)  # the stretch still open at the end
    return [(start + (k + 0.5) * per, min(rss for _, rss in group))
            for k, group in sorted(stretches.items()) if k < last_full]


def report(records: List[Record], samples: List[Sample], seconds: float, clients: int) -> Dict[str, Any]:
    """Counts, statuses, latency and worker memory/descriptors over time, and the targets."""
    by_kind: Dict[str, Dict[str, int]] = {}
    for record in records:
        row = by_kind.setdefault(record.kind, {})
        row[str(record.status)] = row.get(str(record.status), 0) + 1
    warm_t = seconds * WARMUP_SHARE
    buckets = []
    width = seconds / BUCKETS
    for b in range(BUCKETS):
        inside = [r for r in records if b * width <= r.t < (b + 1) * width or (b == BUCKETS - 1 and r.t >= seconds)]
        answered = [r.ms for r in inside if r.status == 200]
        near = [s for s in samples if b * width <= s.t <= (b + 1) * width] or samples[-1:]
        last = near[-1] if near else Sample(0, 0)
        buckets.append({
            "from_s": round(b * width), "to_s": round((b + 1) * width), "requests": len(inside),
            "p50_ms": round(percentile(answered, 50), 1) if answered else None,
            "p95_ms": round(percentile(answered, 95), 1) if answered else None,
            "rss_mb": {str(pid): round(v, 1) for pid, v in last.rss_mb.items()},
            "fds": {str(pid): v for pid, v in last.fds.items()},
        })
    workers = sorted({pid for s in samples for pid in s.rss_mb})
    growth = {}
    for pid in workers:
        after = [(s.answered, s.rss_mb[pid]) for s in samples if s.t >= warm_t and pid in s.rss_mb]
        warm_fds = [s.fds[pid] for s in samples if s.t < warm_t and pid in s.fds] or [0]
        late_fds = [s.fds[pid] for s in samples if s.t >= warm_t and pid in s.fds] or [0]
        floor = rss_floor(after)
        by_map = {}
        for kind in MAP_KINDS:
            points = rss_floor([(s.answered, s.maps_mb[pid][kind]) for s in samples
                                if s.t >= warm_t and pid in s.maps_mb], per=FLOOR_REQUESTS * 2)
            if points:
                by_map[kind] = {"first_mb": round(points[0][1], 1), "last_mb": round(points[-1][1], 1),
                                "slope_mb_per_1000": _fitted(points)}
        growth[str(pid)] = {
            "rss_floor_slope_mb_per_1000": _fitted(floor),
            "rss_floor_points": len(floor),
            "rss_floor_first_mb": round(floor[0][1], 1) if floor else None,
            "rss_floor_last_mb": round(floor[-1][1], 1) if floor else None,
            "rss_slope_mb_per_1000": _fitted(after),
            "rss_first_mb": round(after[0][1], 1) if after else None,
            "rss_last_mb": round(after[-1][1], 1) if after else None,
            "fds_warmup_max": max(warm_fds), "fds_after_max": max(late_fds),
            "rss_floor_by_map": by_map,
        }
    unexpected = [r for r in records if not r.expected]
    server_errors = [r for r in records if r.status >= 500]
    slopes = [g["rss_floor_slope_mb_per_1000"] for g in growth.values()]
    answered_after_warmup = sum(1 for r in records if r.t >= warm_t)
    return {
        "seconds": seconds, "clients": clients, "requests": len(records),
        "requests_after_warmup": answered_after_warmup,
        "by_kind": by_kind, "buckets": buckets, "workers": growth,
        "unexpected": [{"t": round(r.t, 1), "kind": r.kind, "status": r.status} for r in unexpected[:20]],
        "samples": [{"t": round(s.t, 1), "answered": s.answered, "rss_mb": {str(p): round(v, 1) for p, v in s.rss_mb.items()},
                     "fds": {str(p): v for p, v in s.fds.items()},
                     **({"maps_mb": {str(p): {k: round(v, 1) for k, v in m.items()} for p, m in s.maps_mb.items()}}
                        if s.maps_mb else {})} for s in samples],
        "targets": {
            "no_5xx": not server_errors,
            "statuses_as_expected": not unexpected,
            "rss_slope_under_limit": bool(slopes) and all(s is not None and s < RSS_SLOPE_LIMIT_MB for s in slopes),
            "fds_flat": all(g["fds_after_max"] - g["fds_warmup_max"] <= FD_GROWTH_LIMIT for g in growth.values()),
        },
    }


def render(result: Dict[str, Any]) -> str:
    """The report as text: kinds and statuses, then a row per stretch of time, then the targets."""
    lines = [f"soak: {result['requests']} requests in {result['seconds']:.0f} s from {result['clients']} clients"]
    lines.append(f"{'request':<46}statuses")
    for kind, statuses in sorted(result["by_kind"].items()):
        lines.append(f"{kind:<46}" + ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items())))
    lines.append("")
    lines.append(f"{'time (s)':<14}{'requests':>9}{'p50 ms':>10}{'p95 ms':>10}   worker RSS MB / open fds")
    for b in result["buckets"]:
        per_worker = "  ".join(f"{b['rss_mb'][pid]:.0f}/{b['fds'].get(pid, '?')}" for pid in b["rss_mb"])
        p50 = f"{b['p50_ms']:.0f}" if b["p50_ms"] is not None else "-"
        p95 = f"{b['p95_ms']:.0f}" if b["p95_ms"] is not None else "-"
        lines.append(f"{b['from_s']:>5}-{b['to_s']:<8}{b['requests']:>9}{p50:>10}{p95:>10}   {per_worker}")
    lines.append("")
    for pid, g in result["workers"].items():
        lines.append(f"worker {pid}: RSS floor {g['rss_floor_first_mb']} -> {g['rss_floor_last_mb']} MB after warm-up "
                     f"({g['rss_floor_points']} stretches of {FLOOR_REQUESTS} requests), slope "
                     f"{_slope_text(g['rss_floor_slope_mb_per_1000'], ' MB / 1,000 requests')} (limit {RSS_SLOPE_LIMIT_MB}; raw samples "
                     f"{g['rss_first_mb']} -> {g['rss_last_mb']} MB, slope {_slope_text(g['rss_slope_mb_per_1000'])}); open fds "
                     f"{g['fds_warmup_max']} in warm-up, {g['fds_after_max']} after (limit +{FD_GROWTH_LIMIT})")
        where = g.get("rss_floor_by_map") or {}
        if where:
            lines.append("  where the floor lies (every " f"{MAPS_EVERY}th sample, floor of {FLOOR_REQUESTS * 2} requests): " + "; ".join(
                f"{kind} {m['first_mb']} -> {m['last_mb']} MB ({_slope_text(m['slope_mb_per_1000'])} / 1,000)" for kind, m in where.items()))
    for name, ok in result["targets"].items():
        lines.append(f"{'PASS' if ok else 'FAIL'}  {name}")
    for miss in result["unexpected"]:
        lines.append(f"  unexpected: {miss}")
    return "\n".join(lines)


def section(served: Any, videos: Path, minutes: float, clients: int) -> Dict[str, Any]:
    """``python -m bench --sections soak``: the same soak against the benchmark's own TorchServe
    (both registrations), after whatever sections ran before it (the warm-up share absorbs them)."""
    from harness.paths import MODEL, TIMELINE_MODEL

    pids = worker_pids_of(served.server, (MODEL, TIMELINE_MODEL))
    progress(f"soak: {clients} clients for {minutes:g} min; worker pids {pids()}")
    result = run(send_with(served), pids, videos, minutes * 60, clients, timeline_model=TIMELINE_MODEL)
    result["minutes"] = minutes
    return result


def targets(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The soak's targets as rows of the benchmark's: each worker's RSS floor slope, 5xx, descriptors."""
    from bench.util import target

    result = results.get("http", {}).get("soak")
    if not result or "workers" not in result:
        return []
    span = f"{result['minutes']:g} min, {result['requests']} requests"
    rows = [target(
        f"soak: RSS floor slope, worker {pid} [{span}]", g["rss_floor_slope_mb_per_1000"], "<=", RSS_SLOPE_LIMIT_MB,
        f"MB per 1,000 requests after warm-up: floor {g['rss_floor_first_mb']} -> {g['rss_floor_last_mb']} MB "
        f"({g['rss_floor_points']} stretches of {FLOOR_REQUESTS})"
        + ("; not fitted under 3 stretches: a longer --soak-minutes" if g["rss_floor_slope_mb_per_1000"] is None else ""),
        "where the floor lies: " + ", ".join(f"{kind} {_slope_text(m['slope_mb_per_1000'])}"
                                             for kind, m in (g.get("rss_floor_by_map") or {}).items()),
    ) for pid, g in result["workers"].items()]
    server_errors = sum(n for statuses in result["by_kind"].values() for s, n in statuses.items() if int(s) >= 500)
    rows.append(target(f"soak: 5xx answers [{span}]", server_errors, "<=", 0,
                       f"{len(result['unexpected'])} unexpected statuses in all", ""))
    growth = max((g["fds_after_max"] - g["fds_warmup_max"] for g in result["workers"].values()), default=0)
    rows.append(target(f"soak: open descriptors grown [{span}]", growth, "<=", FD_GROWTH_LIMIT,
                       "most after warm-up minus most during it, any worker", ""))
    return rows


def render_section(results: Dict[str, Any]) -> List[str]:
    result = results.get("http", {}).get("soak")
    if not result or "workers" not in result:
        return []
    return ["", f"12. Soak: {result['minutes']:g} minutes of real videos, bad inputs and streamed timelines "
                "(bench/soak.py; `make soak` runs the same alone)", render(result)]


def main(argv: Optional[List[str]] = None) -> int:
    import warnings

    from bench.served import Served
    from harness.paths import MAR, MODEL, SHARED_VIDEOS, TIMELINE_MODEL

    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="how long to send (default 30)")
    parser.add_argument("--clients", type=int, default=2, help="concurrent clients (default 2)")
    parser.add_argument("--sample-s", type=float, default=1.0, help="seconds between RSS/fd samples (default 1)")
    parser.add_argument("--videos", type=Path, default=SHARED_VIDEOS)
    parser.add_argument("--mar", type=Path, default=MAR)
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.clients < 1:
        parser.error("--minutes must be > 0 and --clients >= 1")
    warnings.filterwarnings("ignore")
    with Served(args.mar) as served:
        pids = worker_pids_of(served.server, (MODEL, TIMELINE_MODEL))
        progress(f"soak: {args.clients} clients for {args.minutes:g} min; worker pids {pids()}")
        result = run(send_with(served), pids, args.videos, args.minutes * 60, args.clients, args.sample_s,
                     timeline_model=TIMELINE_MODEL)
    result["machine"] = {"cpu": _cpu(), "cores": os.cpu_count()}
    print(render(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(result["targets"].values()) else 1


def _cpu() -> str:
    from bench.util import machine

    return str(machine().get("cpu", ""))


if __name__ == "__main__":
    sys.exit(main())
