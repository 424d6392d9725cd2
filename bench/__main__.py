"""``python -m bench [--quick] [--json PATH] [--reps N]``: the whole benchmark, one run, one machine.

Prints a table (stdout) and writes JSON (default bench/results/latest.json); progress goes to
stderr. Sections:

1. per-stage time per request from the handler's own timings (in-process), for a synthesized
   10 s 720p H.264 video (GOP 250) and the real videos of ../shared/videos;
2. the reference pipeline (pytorchvideo EncodedVideo + the hub tutorial's transforms) on the
   same video and window, interleaved with ours;
3. the model-only forward of the default runtime (the floor) and HTTP end-to-end latency through a real,
   isolated TorchServe; beside it, every CPU runtime and precision side by side (frozen
   TorchScript fp32, OpenVINO fp32 and bf16, two views at once) and OpenVINO's conversion time;
   int8 beside bf16 and fp32 with the int8 model's agreement figures (bench/int8.py), and per SlowFast
   variant (section ``int8_variants``, run only when named: ``--sections int8_variants
   [--int8-variants slowfast_r50,slowfast_r101]``, minutes a variant; --quick skips it); the worker's
   preprocess (``timings_ms.preprocess`` of a real TorchServe answer) beside in-process's;
4. throughput of N concurrent clients against model-only throughput at the best micro-batch;
5. cost growth: one default request on 10 s, 60 s and 600 s videos, time and worker peak RSS;
   send_window: the same request as ``python -m client`` sends it (the cut its window needs) against
   the whole file, answer time 600 s / 10 s (bench/send_window.py);
6. a streamed timeline of the 600 s video at the default stride (bench/features.py);
7. an embedding request against a labels request of the same video;
8. clients who leave: a default request alone, right after a streamed timeline of a 600 s video is
   abandoned 3 s in, and while 4 clients stream long timelines (bench/held.py);
9. live: ``python -m client live`` on a 25 fps UDP stream at hop 1 s: latency from a window's last
   frame to its answer (p50, p95) and the share of windows skipped (bench/live.py);
10. kserve: the pod's KServe model server in front of its own TorchServe (deploy/kserve/server.py):
   p50 of KServe v1 / v2 against raw bytes straight to that TorchServe, same video (bench/kserve.py).
11. person-level actions: a keyframe's forward with 1, 5, 20 boxes against the classifier's, and the
   person detector's forward (bench/people.py; left out of --quick unless named in --sections).
12. soak (run only when named, ``--sections soak [--soak-minutes 30]``): ``make soak``'s mix against
   the benchmark's TorchServe, with its RSS slope, 5xx and descriptor targets (bench/soak.py).

Run it alone on the machine: anything else on the cores is measured too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List

from bench.util import machine, progress
from harness.paths import MAR, PT, REPO

DEFAULT_JSON = REPO / "bench" / "results" / "latest.json"
THROUGHPUT_VIDEO = "tv__WUzgd7C1pWA.mp4"  # the Makefile's default VIDEO, a Kinetics-400 video
SECTIONS = ("stages", "model", "runtimes", "variants", "int8", "int8_variants", "latency", "throughput", "growth",
            "send_window", "timeline", "embedding", "live", "held", "kserve", "people", "soak")
# Left out of a default run, run when named: quantizing every variant costs minutes each; the soak
# runs 30 minutes (`--soak-minutes`).
OPT_IN = ("int8_variants", "soak")
SERVED = ("latency", "throughput", "growth", "send_window", "timeline", "embedding", "live", "held", "soak")
RESULTS_MD = REPO / "bench" / "RESULTS.md"


def _csv_ints(text: str) -> List[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _csv_floats(text: str) -> List[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke mode: short videos, 1 repetition, tiny throughput and growth runs (figures meaningless)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"where to write results (default {DEFAULT_JSON.relative_to(REPO)})")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per in-process measurement (default 5; quick 1)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up repetitions before timing (default 1; quick 0)")
    parser.add_argument("--http-reps", type=int, default=None, help="timed HTTP requests per video (default 20; quick 1)")
    parser.add_argument("--clients", type=int, default=None, help="concurrent clients for throughput (default 4; quick 2)")
    parser.add_argument("--per-client", type=int, default=None, help="requests per client for throughput (default 6; quick 1)")
    parser.add_argument("--batches", type=_csv_ints, default=None, help="model-only micro-batch sizes (default 1,2,4; quick 1)")
    parser.add_argument("--growth-seconds", type=_csv_floats, default=None, help="video lengths for cost growth (default 10,60,600; quick 2,4)")
    parser.add_argument("--growth-reps", type=int, default=None, help="timed requests per growth video (default 3; quick 1)")
    parser.add_argument("--live-seconds", type=float, default=None, help="length of the live run (default 60; quick 12)")
    # --clips: its old name, still accepted ("clips" is the request option counting windows).
    parser.add_argument("--videos", "--clips", dest="videos", default=None,
                        help="comma-separated real video names (default: every decodable one; quick: one Kinetics video)")
    parser.add_argument("--sections", default=",".join(x for x in SECTIONS if x not in OPT_IN),
                        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all but {','.join(OPT_IN)}, "
                             "which run when named)")
    parser.add_argument("--int8-variants", default=None,
                        help="section int8_variants: comma-separated classifier variants (default: every one of "
                             "export/variants.py)")
    parser.add_argument("--soak-minutes", type=float, default=None,
                        help="section soak: minutes of the mix (default 30; quick 1)")
    parser.add_argument("--skip-served", action="store_true", help="skip the TorchServe sections (latency, throughput, growth)")
    parser.add_argument("--record", action="store_true",
                        help="append this run's table (machine, date) to bench/RESULTS.md (full runs only)")
    parser.add_argument("--mar", type=Path, default=MAR)
    parser.add_argument("--pt", type=Path, default=PT)
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {
        "reps": 1 if quick else 5, "warmup": 0 if quick else 1, "http_reps": 1 if quick else 20,
        "clients": 2 if quick else 4, "per_client": 1 if quick else 6, "batches": [1] if quick else [1, 2, 4],
        "growth_seconds": [2.0, 4.0] if quick else [10.0, 60.0, 600.0], "growth_reps": 1 if quick else 3,
        "live_seconds": 12.0 if quick else 60.0, "soak_minutes": 1.0 if quick else 30.0,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    default_sections = args.sections == parser.get_default("sections")
    args.sections = [x.strip() for x in args.sections.split(",") if x.strip()]
    if args.quick and default_sections:  # the smoke run leaves out the people section (minutes) unless named
        args.sections.remove("people")
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    if args.int8_variants is not None:
        from export.variants import CLASSIFIERS

        args.int8_variants = [x.strip() for x in args.int8_variants.split(",") if x.strip()]
        unknown = sorted(set(args.int8_variants) - set(CLASSIFIERS))
        if unknown:
            parser.error(f"unknown --int8-variants {unknown}; choose from {', '.join(CLASSIFIERS)}")
        if "int8_variants" not in args.sections:
            parser.error("--int8-variants names the variants of section int8_variants: add it to --sections")
    if args.skip_served:
        args.sections = [x for x in args.sections if x not in SERVED and x != "kserve"]
    if args.record and args.quick:
        parser.error("--record is for full runs; quick figures are not measurements")
    if args.soak_minutes <= 0:
        parser.error("--soak-minutes must be > 0")
    if min(args.reps, args.http_reps, args.clients, args.per_client, args.growth_reps) < 1 or args.warmup < 0:
        parser.error("repetition and client counts must be >= 1 (warm-up >= 0)")
    return args


def _sanitize(value: Any) -> Any:
    """NaN/inf -> null so the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_sanitize(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _stale(mar: Path) -> List[str]:
    if not mar.is_file():
        return []
    built = mar.stat().st_mtime
    sources = list((REPO / "handler").glob("*.py")) + [REPO / "model-config.yaml"]
    return [str(p.relative_to(REPO)) for p in sources if p.is_file() and p.stat().st_mtime > built]


def main(argv: List[str]) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(REPO))
    started = time.perf_counter()
    import yaml

    from bench import report, stages
    from bench import videos as videomod
    from bench.videos import SynthSpec
    from harness.inproc import InProcessHandler

    serving = any(x in SERVED for x in args.sections)
    for needed in (args.pt,) + ((args.mar,) if serving or "kserve" in args.sections else ()):
        if not needed.is_file():
            progress(f"{needed} is missing: run `make mar` (or `make bench`, which builds it)")
            return 2
    notes: List[str] = []
    stale = _stale(args.mar) if serving else []
    if stale:
        notes.append(f"{args.mar.name} is older than {', '.join(stale)}: `make bench` rebuilds it first")
        progress("warning: " + notes[-1])
    config = yaml.safe_load((REPO / "model-config.yaml").read_text()) or {}

    # -- videos ----------------------------------------------------------------------------
    synth_spec = SynthSpec(2.0 if args.quick else 10.0, 1280, 720, 30, 250, "medium", "texture")
    synth_path = videomod.synthesized(synth_spec)
    synth_video = {"name": synth_path.name, "path": synth_path, "kind": "synthetic-720p", "kinetics_size": False}
    only = args.videos.split(",") if args.videos else ([THROUGHPUT_VIDEO] if args.quick else None)
    real = videomod.real_videos(only=only)
    for video in real:
        video["kind"] = "real"
    if not real:
        notes.append(f"no real videos found under {videomod.SHARED_VIDEOS}: the real-video rows are missing")
        progress("warning: " + notes[-1])
    growth_specs = [SynthSpec(s, 1280, 720, 30, 250, "ultrafast", "pattern_noise") for s in args.growth_seconds]
    timeline_spec = SynthSpec(8.0 if args.quick else 600.0, 1280, 720, 30, 250, "ultrafast", "pattern_noise")
    timeline_video = None if "timeline" not in args.sections else {
        "name": videomod.synthesized(timeline_spec).name, "path": videomod.synthesized(timeline_spec),
        "seconds": timeline_spec.seconds, "frames": timeline_spec.frames,
    }
    # Section 8 (held): a 600 s 320x240 video, as issue 19 measured; quick: 120 s (55 windows, still
    # over the main registration's 48).
    held_spec = SynthSpec(120.0 if args.quick else 600.0, 320, 240, 30, 250, "ultrafast", "pattern_noise")
    held_video = None if "held" not in args.sections else {
        "name": videomod.synthesized(held_spec).name, "path": videomod.synthesized(held_spec), "seconds": held_spec.seconds,
    }
    growth_videos = [] if not {"growth", "send_window"} & set(args.sections) else [
        {"name": videomod.synthesized(spec).name, "path": videomod.synthesized(spec), "seconds": spec.seconds,
         "kind": "growth"} for spec in growth_specs
    ]

    results: Dict[str, Any] = {
        "meta": {
            "mode": "quick" if args.quick else "full",
            "reps": args.reps, "warmup": args.warmup, "http_reps": args.http_reps,
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "machine": machine(),
            "model_config": {k: config.get(k) for k in ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay")},
            "handler_options": config.get("handler", {}),
            "synthetic_720p": {"file": synth_path.name, **synth_spec.describe()},
            "growth_videos": [{"file": v["name"], **s.describe()} for v, s in zip(growth_videos, growth_specs)],
            "notes": notes,
        },
    }
    if args.quick:
        notes.append("quick mode: one repetition, short videos; the figures are not measurements")

    # -- in-process: stages, reference, model-only ------------------------------------------
    progress(f"loading the handler in-process ({args.pt.name}, as model-config.yaml says) ...")
    handler = InProcessHandler(args.pt)
    progress(f"  loaded in {handler.load_s:.1f} s: runtime {handler.runtime.name}")
    results["meta"]["machine"]["torch_threads"] = __import__("torch").get_num_threads()
    results["stages"] = {}
    if "stages" in args.sections:
        results["stages"]["clips"] = stages.run(handler, [synth_video] + real, args.reps, args.warmup)
    if "model" in args.sections:
        progress(f"model-only forward at micro-batch sizes {args.batches}")
        results["stages"]["model_only"] = stages.model_only(
            handler, args.batches, args.reps, args.warmup, eager=not args.quick)
    if "runtimes" in args.sections:
        from bench import runtimes

        progress(f"CPU runtimes side by side (default here: {handler.runtime.name})")
        results["runtimes"] = runtimes.compare(handler, args.pt, args.reps, args.warmup, quick=args.quick)
    if "variants" in args.sections:
        from bench import variants

        progress("each SlowFast variant's model-only forward (default CPU runtime, random weights)")
        results["variants"] = variants.compare(args.reps, args.warmup, quick=args.quick)
    if "people" in args.sections:
        from bench import people

        progress("person-level actions: a keyframe with 1, 5, 20 boxes, the classifier's forward, the person detector")
        results["people"] = people.compare(handler, args.reps, args.warmup)
    if "int8" in args.sections:
        from bench import int8

        progress("int8 beside bf16 and fp32 (the int8 model the .pt carries, else quantized here)")
        results["int8"] = int8.compare(handler, args.pt, args.reps, args.warmup, quantize=not args.quick)
    if "int8_variants" in args.sections:
        from bench import int8
        from export.variants import CLASSIFIERS

        if args.quick:
            results["int8_variants"] = {"skipped": "quick runs do not quantize (minutes a variant)"}
        else:
            names = args.int8_variants or list(CLASSIFIERS)
            progress(f"int8 beside bf16 and fp32 for each variant ({', '.join(names)}; random weights, quantized here)")
            results["int8_variants"] = int8.compare_variants(handler, names, args.reps, args.warmup)

    # -- through TorchServe ------------------------------------------------------------------
    if serving:
        from bench import features
        from bench import served as servedmod

        http: Dict[str, Any] = {}
        results["http"] = http
        latency_videos = [synth_video] + [v for v in real if v["kinetics_size"]]
        if args.quick:  # one video is enough to exercise the path
            latency_videos = latency_videos[-1:]
        tp_video = next((v for v in real if v["name"] == THROUGHPUT_VIDEO), None) or (real[0] if real else synth_video)
        with servedmod.Served(args.mar) as served:
            http["server_start_s"] = round(served.start_s, 2)
            http["worker_runtime_log"] = served.runtime_log()
            if "latency" in args.sections:
                http["latency"] = servedmod.latency(served, handler, latency_videos, args.http_reps, args.warmup)
            if "throughput" in args.sections:
                http["throughput"] = servedmod.throughput(served, tp_video, args.clients, args.per_client, args.warmup)
            if "growth" in args.sections:
                http["growth"] = servedmod.growth(served, growth_videos, args.growth_reps, args.warmup)
            if "send_window" in args.sections:
                from bench import send_window

                http["send_window"] = send_window.measure(served, growth_videos, args.growth_reps, args.warmup)
            if timeline_video:
                http["timeline"] = features.timeline(served, timeline_video, handler.contract.num_frames)
            if "embedding" in args.sections:
                http["embedding"] = features.embedding_cost(served, tp_video, args.growth_reps * 2, args.warmup)
            if "live" in args.sections:
                from bench import live as livemod

                http["live"] = livemod.run(served, tp_video["path"], args.live_seconds)
            if "soak" in args.sections:  # before held, whose abandoned timelines run on after it
                from bench import soak
                from harness.paths import SHARED_VIDEOS

                http["soak"] = soak.section(served, SHARED_VIDEOS, args.soak_minutes, clients=2)
            if held_video:  # last: the timelines it abandons run on until the server stops
                from bench import held

                http["held"] = held.measure(served, tp_video, held_video, reps=3 if args.quick else 12,
                                            clients=args.clients, warmup=args.warmup)

    if "kserve" in args.sections:  # its own pod: the model server and a TorchServe of its own
        from bench import kserve as kservemod

        kserve_video = next((v for v in real if v["name"] == THROUGHPUT_VIDEO), None) or (real[0] if real else synth_video)
        results["kserve"] = kservemod.run(args.mar, kserve_video, args.http_reps, args.warmup)

    results["targets"] = report.evaluate(results, config)
    try:
        load_end = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load_end = None
    results["meta"]["load_avg_at_end"] = load_end
    results["meta"]["elapsed_s"] = round(time.perf_counter() - started, 1)

    args.json.parent.mkdir(parents=True, exist_ok=True)
    clean = _sanitize(results)
    args.json.write_text(json.dumps(clean, indent=2, allow_nan=False) + "\n")
    table = report.render(clean)
    if clean.get("http", {}).get("live"):
        from bench import live as livemod

        table += "\n" + "\n".join(livemod.render(clean["http"]["live"]))
    if clean.get("kserve"):
        from bench import kserve as kservemod

        table += "\n" + "\n".join(kservemod.render(clean["kserve"]))
    print(table)
    progress(f"wrote {args.json} ({results['meta']['elapsed_s']:.0f} s in all)")
    if args.record:
        with RESULTS_MD.open("a", encoding="utf-8") as out:
            out.write(report.markdown(clean, table, " ".join(["python -m bench"] + argv)))
        progress(f"appended this run to {RESULTS_MD.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
