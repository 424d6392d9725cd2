"""``python -m bench.overlap``: decoding ahead of the forwards (``prefetch_windows``) off against on,
side by side in one run, through one real TorchServe.

The same .pt is packed twice, identical but for ``prefetch_windows`` (0 and ``--ahead``), and both
archives are served by one isolated TorchServe (a worker each, only one busy at a time). Rounds
alternate which goes first, so load from elsewhere on the machine falls on both alike:

- throughput: ``--clients`` concurrent clients, ``--per-client`` default requests each, against
  model-only (one view per forward, in this process) and the serial ceiling 1000 / (forward +
  decode + preprocess), the bound of a worker that decodes between forwards;
- a streamed timeline of a synthesized 720p video (``--timeline-seconds``): wall time against the
  worker's summed decode + preprocess and summed forwards, i.e. against their sum (serial) and
  their max (full overlap).

Prints a table (stdout), progress on stderr; ``--json`` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List

from bench.util import machine, progress, ratio
from harness.paths import MODEL, PT, SHARED_VIDEOS

THROUGHPUT_VIDEO = "tv__WUzgd7C1pWA.mp4"  # bench/__main__.py's, a Kinetics-400 video


def _archives(pt: Path, ahead: int, directory: Path, on: Dict[str, Any]) -> Dict[int, Path]:
    """{prefetch_windows: .mar}; each also takes long streamed timelines on its main registration;
    ``on``: more handler settings for the archive that prefetches."""
    from export.archive import build_archive
    from harness.precision import model_config

    out = {}
    for windows in (0, ahead):
        folder = directory / f"config-{windows}"
        folder.mkdir()
        settings = {"prefetch_windows": windows, "max_streamed_views_per_request": 2048, **(on if windows else {})}
        config = model_config(folder, **settings)
        progress(f"packing {pt.name} with {settings} ...")
        out[windows] = build_archive(pt, directory / f"{MODEL}_prefetch{windows}.mar", config)
    return out


def _timeline(served: Any, body: bytes, model: str) -> Dict[str, float]:
    started = time.perf_counter()
    last = None
    with served.post(body, {"timeline": "true", "stream": "true"}, stream=True, model=model) as reply:
        if reply.status_code != 200:
            raise RuntimeError(f"HTTP {reply.status_code}: {reply.text[:300]}")
        for raw in reply.iter_lines():
            if raw.strip():
                last = raw
    wall_s = time.perf_counter() - started
    final = json.loads(last or b"{}")
    if "timeline" not in final:
        raise RuntimeError(f"the streamed timeline ended without its full answer: {str(final)[:300]}")
    timings = final["timings_ms"]
    return {
        "wall_s": round(wall_s, 2), "windows": len(final["timeline"]),
        "decode_s": round(timings["decode"] / 1000, 2), "preprocess_s": round(timings["preprocess"] / 1000, 2),
        "forwards_s": round(timings["inference"] / 1000, 2),
    }


def python_share_during(work: Callable[[], Any], seconds: float = 0.5) -> float:
    """How far a pure-Python thread gets while ``work()`` runs in this thread, over how far it gets
    alone in the same time: near 0 when ``work`` holds the GIL, well above 0 when it releases it
    (below 1 anyway where ``work`` keeps the cores busy)."""
    counts = [0]
    running = threading.Event()
    stop = threading.Event()

    def count() -> None:
        running.set()
        while not stop.is_set():
            counts[0] += 1

    def rate(during: Callable[[], Any]) -> float:
        counts[0] = 0
        stop.clear()
        running.clear()
        thread = threading.Thread(target=count)
        thread.start()
        running.wait()
        started, before = time.perf_counter(), counts[0]
        during()
        elapsed, done = time.perf_counter() - started, counts[0] - before
        stop.set()
        thread.join()
        return done / elapsed

    alone = rate(lambda: time.sleep(seconds))
    return rate(work) / alone


def _median(rows: List[Dict[str, Any]], key: str) -> float:
    return statistics.median(float(row[key]) for row in rows)


def run(args: argparse.Namespace) -> Dict[str, Any]:
    from bench import served as servedmod
    from bench import stages, videos as videomod
    from bench.videos import SynthSpec
    from harness.inproc import InProcessHandler
    from harness.torchserve import LocalTorchServe

    clip = {"name": THROUGHPUT_VIDEO, "path": SHARED_VIDEOS / THROUGHPUT_VIDEO}
    if not clip["path"].is_file():
        raise SystemExit(f"{clip['path']} is missing: the throughput video comes from ../shared/videos")
    timeline_path = videomod.synthesized(SynthSpec(args.timeline_seconds, 1280, 720, 30, 250, "ultrafast", "pattern_noise"))

    progress(f"in-process: {args.pt.name}'s model-only forward and the clip's decode + preprocess")
    handler = InProcessHandler(args.pt)
    model = stages.model_only(handler, [1], args.reps, 1, eager=False)
    forward_ms = model["forward_ms"]["1"]["median"]
    handled = [handler.handle(clip["path"].read_bytes())["timings_ms"] for _ in range(args.reps + 1)][1:]
    decode_preprocess_ms = statistics.median(t["decode"] + t["preprocess"] for t in handled)
    # Overlap needs both sides to run without the GIL: the forward, and FFmpeg's decode.
    from handler.decoding import VideoDecoder

    pathways, infer = handler.dummy_pathways(1), handler.runtime.infer
    data = clip["path"].read_bytes()
    contract, limits = handler.contract, handler.handler.limits

    def decode() -> None:
        with VideoDecoder(data, limits, contract.short_side) as decoder:
            list(decoder.sample_windows([(0.0, decoder.info.duration)], contract.num_frames))

    gil = {"forward": round(python_share_during(lambda: infer(pathways)), 3),
           "decode": round(python_share_during(decode), 3)}
    progress(f"  a Python thread's progress, against idle: during a forward {gil['forward']:.2f}, "
             f"during a decode {gil['decode']:.2f} (near 0 = the GIL is held)")
    del handler

    out: Dict[str, Any] = {
        "machine": machine(), "ahead": args.ahead, "on": dict(args.on), "clients": args.clients, "per_client": args.per_client,
        "model_only_views_per_s": round(1000 / forward_ms, 4), "forward_ms": round(forward_ms, 1),
        "decode_preprocess_ms": round(decode_preprocess_ms, 1),
        "serial_ceiling_per_s": round(1000 / (forward_ms + decode_preprocess_ms), 4),
        "python_share_during": gil,
        "throughput": {0: [], args.ahead: []}, "timeline": {0: [], args.ahead: []},
    }
    with tempfile.TemporaryDirectory(prefix="slowfast-overlap-") as scratch:
        mars = _archives(args.pt, args.ahead, Path(scratch), dict(args.on))
        names = {windows: mar.stem for windows, mar in mars.items()}
        server = LocalTorchServe(mars[0], Path(scratch) / "ts", also=[mars[args.ahead]])
        progress("starting an isolated TorchServe serving both archives ...")
        with server, servedmod.Served(server=server) as served:
            video = clip["path"].read_bytes()
            body = timeline_path.read_bytes()
            for windows in names:  # warm-up: sessions, the batching path, each worker's first forwards
                served.predict(video, model=names[windows])
            for round_ in range(args.rounds):
                order = list(names) if round_ % 2 == 0 else list(reversed(names))
                for windows in order:
                    progress(f"round {round_ + 1}/{args.rounds}: prefetch_windows {windows}")
                    tp = servedmod.throughput(served, clip, args.clients, args.per_client, warmup=0, model=names[windows])
                    out["throughput"][windows].append({"videos_per_s": tp["clips_per_s"], "batch": tp["mean_batch_size"]})
                    tl = _timeline(served, body, names[windows])
                    progress(f"  timeline: {tl['windows']} windows in {tl['wall_s']:.1f} s; decode "
                             f"{tl['decode_s']:.1f} s + preprocess {tl['preprocess_s']:.1f} s, forwards {tl['forwards_s']:.1f} s")
                    out["timeline"][windows].append(tl)
    return out


def render(out: Dict[str, Any]) -> str:
    best, ceiling = out["model_only_views_per_s"], out["serial_ceiling_per_s"]
    lines = [
        f"CPU: {out['machine'].get('cpu')} ({out['machine'].get('cores')} cores); {out['clients']} clients x "
        f"{out['per_client']} requests of {THROUGHPUT_VIDEO}, medians of the rounds"
        + (f"; the prefetching archive also has {out['on']}" if out.get("on") else ""),
        f"model-only {best:.3f} views/s (forward {out['forward_ms']:.0f} ms); serial ceiling {ceiling:.3f} videos/s "
        f"= {ratio(ceiling, best):.2f}x model-only (decode + preprocess {out['decode_preprocess_ms']:.0f} ms in-process)",
        f"a Python thread's progress against idle (near 0: the GIL is held): during a forward "
        f"{out['python_share_during']['forward']:.2f}, during a decode {out['python_share_during']['decode']:.2f}",
        f"{'prefetch_windows':>16}  {'videos/s':>8}  {'/model-only':>11}  {'/ceiling':>8}  "
        f"{'timeline s':>10}  {'decode+pre s':>12}  {'forwards s':>10}  {'wall/sum':>8}  {'wall/max':>8}",
    ]
    for windows in out["throughput"]:
        tp, tl = out["throughput"][windows], out["timeline"][windows]
        served = _median(tp, "videos_per_s")
        wall, forwards = _median(tl, "wall_s"), _median(tl, "forwards_s")
        decode = statistics.median(row["decode_s"] + row["preprocess_s"] for row in tl)
        lines.append(
            f"{windows:>16}  {served:>8.3f}  {ratio(served, best):>11.2f}  {ratio(served, ceiling):>8.2f}  "
            f"{wall:>10.1f}  {decode:>12.1f}  {forwards:>10.1f}  {ratio(wall, decode + forwards):>8.2f}  "
            f"{ratio(wall, max(decode, forwards)):>8.2f}"
        )
    lines.append("each round: " + "; ".join(
        f"prefetch {w}: " + ", ".join(f"{row['videos_per_s']:.3f}/s" for row in out["throughput"][w])
        + " | " + ", ".join(f"{row['wall_s']:.0f} s" for row in out["timeline"][w]) for w in out["throughput"]))
    return "\n".join(lines)


def _setting(text: str) -> Any:
    import yaml

    key, _, value = text.partition("=")
    return key.strip(), yaml.safe_load(value)


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overlap", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pt", type=Path, default=PT)
    parser.add_argument("--ahead", type=int, default=1, help="prefetch_windows of the 'on' archive (default 1)")
    parser.add_argument("--rounds", type=int, default=2, help="off/on rounds, alternating which goes first (default 2)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--per-client", type=int, default=4)
    parser.add_argument("--reps", type=int, default=5, help="in-process repetitions for the forward and decode figures")
    parser.add_argument("--timeline-seconds", type=float, default=60.0, help="length of the streamed timeline's video")
    parser.add_argument("--on", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                        help="another handler setting for the archive that prefetches, e.g. decode_threads=1")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.ahead < 1 or min(args.rounds, args.clients, args.per_client, args.reps) < 1:
        parser.error("--ahead, --rounds, --clients, --per-client and --reps must be >= 1")
    warnings.filterwarnings("ignore")
    out = run(args)
    table = render(out)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
