"""``python -m bench.gpu_check`` (``make gpu-check``): the first measurement on a machine with a GPU.

From a fresh checkout with the venv installed, in one command and well under 8 minutes:

1. ``make mar`` (exports and archives only what is out of date; no-op when built);
2. the worker's runtime on ``cuda:<gpu>`` (the handler loaded in this process as a GPU worker
   loads it: TorchScript, frozen, channels-last, model-config.yaml's precision): forward ms per
   batch size (views per forward; 1, 2, 4, 8 by default), median of ``--repeats``;
3. served p50: a real TorchServe on free loopback ports whose workers take the GPU
   (config.properties: every visible GPU), ``--requests`` requests of one real video, one client;
4. the largest |difference| between the probabilities the served GPU worker answers for that video
   (every class: ``topk`` = all) and the CPU answer (the handler in this process on the CPU,
   ``--cpu-runtime``: TorchScript fp32 by default, the exported model's own arithmetic);
5. people, where the action detector is built (``--people``, default
   build/slowfast_r50_detection.pt: ``make mar`` builds only the classifier, ``make mar
   MODEL=slowfast_r50_detection`` this one; skipped, said so, without it): both detection networks
   loaded as a GPU worker loads them (the handler in this process, given the GPU), the action
   detector's forward ms for 1, 5 and 20 boxes on a Kinetics-sized working clip and the largest
   |probability difference| of 5 boxes from the same file on the CPU (TorchScript fp32), at
   ``precision`` fp32 and fp16 (autocast), and the person detector's ms a 1280x720 frame (float32;
   its copy to the GPU included, as served). Seconds on a GPU; a failure here is reported in place
   of its figures and fails no other stage.

Exit status: 0 measured; 3 no usable GPU (a message says why; nothing exported or started);
1 a stage failed (its error is printed). Figures go to stdout; progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from bench.util import percentile, progress
from client.people import DETECTION_MODEL
from harness.paths import MAR, PT, REPO, SHARED_VIDEOS

NO_GPU = 3
DEFAULT_VIDEO = SHARED_VIDEOS / "tv__WUzgd7C1pWA.mp4"  # the README's curl video (Makefile VIDEO)
DEFAULT_PEOPLE_PT = REPO / "build" / f"{DETECTION_MODEL}.pt"  # `make mar MODEL=slowfast_r50_detection`
PEOPLE_FRAME = (1280, 720)  # the person detector's frame (width, height): a 720p keyframe's, as served
PEOPLE_COMPARED_BOXES = 5  # boxes of the GPU-vs-CPU comparison
PEOPLE_PRECISIONS = ("fp32", "fp16")  # the action detector's, each loaded as a worker with that precision
PEOPLE_WARMUP = 3  # calls before timing: cuDNN's algorithms and the profiling executor's two optimizing runs


def batch_sizes(text: str) -> List[int]:
    """``"1,2,4,8"`` -> ``[1, 2, 4, 8]``: positive, distinct, ascending."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch sizes are integers separated by commas, not {text!r}")
    if not sizes or min(sizes) < 1 or len(set(sizes)) != len(sizes):
        raise argparse.ArgumentTypeError(f"batch sizes must be distinct and at least 1: {text!r}")
    return sorted(sizes)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO, help="a real video (default: %(default)s)")
    parser.add_argument("--gpu", type=int, default=0, help="the GPU of the in-process runtime (cuda:N)")
    parser.add_argument("--batch-sizes", type=batch_sizes, default=[1, 2, 4, 8], help="views per forward, e.g. 1,2,4,8")
    parser.add_argument("--repeats", type=int, default=20, help="timed forwards per batch size (after 3 warm-up)")
    parser.add_argument("--requests", type=int, default=20, help="timed HTTP requests (after 2 warm-up)")
    parser.add_argument("--cpu-runtime", choices=("torchscript", "openvino"), default="torchscript",
                        help="the CPU answer compared against (openvino: what CPU workers serve by default)")
    parser.add_argument("--no-export", action="store_true", help="use build/ and model_store/ as they are")
    parser.add_argument("--people", type=Path, default=DEFAULT_PEOPLE_PT,
                        help="the action detector's .pt for the people stage, skipped where it is missing "
                             "(default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.requests < 1:
        parser.error("--repeats and --requests must be at least 1")
    return args


def gpu_problem(gpu: int) -> Optional[str]:
    """Why ``cuda:<gpu>`` cannot be measured here, or None when it can."""
    smi = shutil.which("nvidia-smi")
    where = f"torch {torch.__version__} (CUDA build {torch.version.cuda or 'none'}); nvidia-smi {'at ' + smi if smi else 'not found'}"
    if not torch.cuda.is_available():
        return f"no CUDA GPU is visible to torch: {where}"
    if gpu >= torch.cuda.device_count():
        return f"--gpu {gpu} but torch sees {torch.cuda.device_count()} GPU(s): {where}"
    if not smi:
        # TorchServe counts GPUs with nvidia-smi: without it every served worker would be a CPU worker.
        return f"torch sees a GPU but TorchServe cannot (it counts GPUs with nvidia-smi): {where}"
    return None


def describe_gpu(gpu: int) -> Dict[str, Any]:
    properties = torch.cuda.get_device_properties(gpu)
    driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", f"--id={gpu}"],
                            capture_output=True, text=True).stdout.strip()
    return {"gpu": properties.name, "memory_gib": round(properties.total_memory / 2**30, 1), "driver": driver,
            "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}


def worker_device(gpu: int) -> torch.device:
    """The device a worker given GPU ``gpu`` must run on (a CPU rehearsal replaces it: tests)."""
    return torch.device(f"cuda:{gpu}")


def on_gpu(worker: Dict[str, Any]) -> bool:
    """Whether TorchServe's description of a worker says it holds a GPU."""
    return bool(worker.get("gpu"))


def forward_ms(handler: Any, sizes: Sequence[int], repeats: int) -> Dict[int, Dict[str, float]]:
    """Median and min ms of one forward of ``b`` random views (outputs copied back: synchronised)."""
    out = {}
    for size in sizes:
        pathways = handler.dummy_pathways(size)
        for _ in range(3):  # cuDNN autotunes each new shape
            handler.forward_ms(pathways)
        times = [handler.forward_ms(pathways) for _ in range(repeats)]
        median = percentile(times, 50)
        out[size] = {"median_ms": round(median, 2), "min_ms": round(min(times), 2),
                     "ms_per_view": round(median / size, 2), "views_per_s": round(1000 * size / median, 1)}
        progress(f"  batch {size}: {median:.1f} ms ({median / size:.1f} ms a view)")
    return out


def probabilities(answer: Dict[str, Any]) -> Dict[int, float]:
    """{class index: probability} of an answer asked for every class."""
    return {int(p["index"]): float(p["probability"]) for p in answer["predictions"]}


def largest_difference(a: Dict[int, float], b: Dict[int, float]) -> float:
    if a.keys() != b.keys():
        raise RuntimeError(f"the answers name different classes ({len(a)} vs {len(b)})")
    return max(abs(a[k] - b[k]) for k in a)


def people_clip(contract: Any) -> List[torch.Tensor]:
    """A seeded ``[slow (1,3,T/a,H,W), fast (1,3,T,H,W)]`` float32 working clip on the CPU, Kinetics-sized
    (bench/people.py's: the cost depends on the size, not the pixels)."""
    from bench.people import HEIGHT, WIDTH

    fast = torch.randn(1, 3, contract.num_frames, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(0))
    return [fast[:, :, :: contract.alpha].contiguous(), fast]


def people_forward_ms(model: Any, repeats: int) -> Dict[str, Any]:
    """A loaded action detector's forward ms for 1, 5 and 20 boxes on ``people_clip`` (moved to its
    device first, as the served path normalizes it there)."""
    from bench.people import BOX_COUNTS, HEIGHT, WIDTH, median_ms, random_boxes
    from handler.runtime_base import to_device

    pathways = [to_device(p, model.device) for p in people_clip(model.contract)]
    keyframe = {}
    for count in BOX_COUNTS:
        boxes = to_device(random_boxes(count), model.device)
        # The answers come back to the CPU: each call has waited for its GPU work.
        keyframe[str(count)] = round(median_ms(lambda: model.infer(pathways, boxes), repeats, PEOPLE_WARMUP)["median"], 2)
        progress(f"  action detector ({model.name}), {count} box(es): {keyframe[str(count)]} ms")
    return {"runtime": model.name, "device": str(model.device), "clip": f"{WIDTH}x{HEIGHT}, {model.contract.num_frames} frames",
            "keyframe_ms": keyframe}


def person_detector_ms(finder: Any, repeats: int) -> Dict[str, Any]:
    """The person detector's ms a seeded ``PEOPLE_FRAME`` uint8 frame given on the CPU (as served)."""
    from bench.people import median_ms

    width, height = PEOPLE_FRAME
    frame = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    figures = {"runtime": finder.name, "device": str(finder.device), "frame": f"{width}x{height}",
               "ms": round(median_ms(lambda: finder.find(frame), repeats, PEOPLE_WARMUP)["median"], 2)}
    progress(f"  person detector ({finder.name}), a {width}x{height} frame: {figures['ms']} ms")
    return figures


def people_stage(pt: Path, gpu: int, repeats: int, precisions: Sequence[str] = PEOPLE_PRECISIONS) -> Dict[str, Any]:
    """Stage 5's figures: per GPU ``precision`` (the handler's setting) the action detector's forward ms
    and its largest |probability difference| from the CPU's TorchScript fp32 (``PEOPLE_COMPARED_BOXES``
    boxes); the person detector's ms (float32 always). ``{"skipped": why}`` without an action detector
    at ``pt``; ``{"failed": why}`` if anything fails (the other stages' figures stand)."""
    from bench.people import random_boxes
    from handler.people.model import ActionDetector
    from handler.serve_settings import ServeOptions
    from harness.inproc import InProcessHandler

    if not pt.is_file():
        return {"skipped": f"{pt} not found: build it with `make mar MODEL={DETECTION_MODEL}` (offline: add "
                           "PERSON_DETECTOR=random for a person detector) or give --people"}
    try:
        cpu = ActionDetector.load(pt, ServeOptions(cpu_runtime="torchscript", warmup=False))
        clip, boxes = people_clip(cpu.contract), random_boxes(PEOPLE_COMPARED_BOXES)
        on_cpu = cpu.infer(clip, boxes)[1]
        figures: Dict[str, Any] = {"file": pt.name, "cpu_runtime": cpu.name, "compared_boxes": PEOPLE_COMPARED_BOXES,
                                   "runs": [], "person_detector": None}
        del cpu
        for precision in precisions:
            progress(f"people: {pt.name} on cuda:{gpu} at precision {precision}, as a GPU worker loads it")
            worker = InProcessHandler(pt, gpu_id=gpu, handler={"precision": precision})
            if worker.people is None:
                return {"skipped": f"{pt.name} is not an action detector (its contract's task is {worker.contract.task})"}
            measured = {"precision": precision, "load_s": round(worker.load_s, 1),
                        **people_forward_ms(worker.people.model, repeats)}
            on_gpu = worker.people.model.infer(clip, boxes)[1]
            measured["max_abs_probability_difference_vs_cpu"] = float((on_gpu - on_cpu).abs().max())
            figures["runs"].append(measured)
            if worker.people.finder is not None and figures["person_detector"] is None:
                figures["person_detector"] = person_detector_ms(worker.people.finder, repeats)
            del worker
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return figures
    except Exception as exc:  # noqa: BLE001 (reported in place of the figures; the classifier's stand)
        return {"failed": f"{type(exc).__name__}: {exc}"}


def people_report(people: Dict[str, Any]) -> List[str]:
    """Stage 5's lines."""
    for word in ("skipped", "failed"):
        if word in people:
            return [f"people: {word}: {people[word]}"]
    lines = [f"people ({people['file']}), a keyframe's forward by box count; max |probability difference| vs CPU "
             f"({people['cpu_runtime']}, {people['compared_boxes']} boxes):"]
    for measured in people["runs"]:
        boxes = ", ".join(f"{count}: {ms:.1f} ms" for count, ms in measured["keyframe_ms"].items())
        lines.append(f"  {measured['runtime']} on {measured['device']} ({measured['clip']}; loaded in "
                     f"{measured['load_s']} s): {boxes}; difference {measured['max_abs_probability_difference_vs_cpu']:.2e}")
    finder = people["person_detector"]
    lines.append("  person detector: none packed" if finder is None else
                 f"  person detector {finder['runtime']} on {finder['device']}: {finder['ms']:.1f} ms a {finder['frame']} frame")
    return lines


def run(args: argparse.Namespace) -> Dict[str, Any]:
    from bench.served import Served
    from harness.inproc import InProcessHandler

    started = time.monotonic()
    figures: Dict[str, Any] = {"device": describe_gpu(args.gpu), "video": args.video.name}
    if not args.no_export:
        progress("make mar (exports and archives only what is out of date)")
        subprocess.run(["make", "--no-print-directory", "mar"], cwd=REPO, check=True)
    video = args.video.read_bytes()

    progress(f"the worker's runtime on cuda:{args.gpu}")
    gpu = InProcessHandler(PT, gpu_id=args.gpu)
    if gpu.handler.device != worker_device(args.gpu):
        raise RuntimeError(f"the handler chose {gpu.handler.device}, not {worker_device(args.gpu)}")
    every_class = {"topk": str(gpu.contract.num_classes)}
    figures["runtime"] = gpu.runtime.name
    figures["load_s"] = round(gpu.load_s, 1)
    figures["forward_ms"] = forward_ms(gpu, args.batch_sizes, args.repeats)
    figures["peak_gpu_memory_mib"] = round(torch.cuda.max_memory_allocated(args.gpu) / 2**20) if torch.cuda.is_available() else None
    in_process_gpu = probabilities(gpu.handle(video, every_class))
    del gpu
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

    progress(f"the CPU answer ({args.cpu_runtime})")
    cpu = InProcessHandler(PT, handler={"cpu_runtime": args.cpu_runtime})
    figures["cpu_runtime"] = cpu.runtime.name
    cpu_answer = probabilities(cpu.handle(video, every_class))
    del cpu

    progress("a real TorchServe with GPU workers")
    with Served(MAR) as served:
        workers = served.server.workers()
        if not workers or not all(on_gpu(w) for w in workers):
            raise RuntimeError(f"TorchServe's workers are not on a GPU: {workers}")
        figures["served_workers"] = [{"id": w.get("id"), "gpu": w.get("gpu")} for w in workers]
        for _ in range(2):
            served.predict(video)
        e2e = [served.predict(video)["e2e_ms"] for _ in range(args.requests)]
        served_answer = probabilities(served.predict(video, every_class))
        figures["served_ms"] = {"p50": round(percentile(e2e, 50), 1), "p95": round(percentile(e2e, 95), 1),
                                "requests": len(e2e)}
        progress(f"  served p50 {figures['served_ms']['p50']} ms over {len(e2e)} requests")
        log = served.server.log_dir / "model_log.log"
        figures["served_worker_log"] = [line.split(" - ", 1)[-1] for line in log.read_text(errors="replace").splitlines()
                                        if " on cuda" in line][-4:] if log.is_file() else []
    figures["max_abs_probability_difference"] = {
        "served_gpu_vs_cpu": largest_difference(served_answer, cpu_answer),
        "in_process_gpu_vs_cpu": largest_difference(in_process_gpu, cpu_answer),
    }
    progress(f"  max |probability difference| vs CPU: {figures['max_abs_probability_difference']}")
    figures["people"] = people_stage(args.people, args.gpu, args.repeats)
    figures["total_s"] = round(time.monotonic() - started, 1)
    return figures


def report(figures: Dict[str, Any]) -> str:
    device = figures["device"]
    lines = [f"GPU check: {device['gpu']} ({device['memory_gib']} GiB), driver {device['driver']}, "
             f"torch {device['torch']} CUDA {device['cuda']} cuDNN {device['cudnn']}",
             f"runtime {figures['runtime']} (loaded in {figures['load_s']} s); peak GPU memory {figures['peak_gpu_memory_mib']} MiB",
             "forward (views per forward -> ms):"]
    for size, row in figures["forward_ms"].items():
        lines.append(f"  {size:>3}  {row['median_ms']:>8.1f} ms  ({row['ms_per_view']:.1f} ms a view, {row['views_per_s']} views/s)")
    served = figures["served_ms"]
    lines.append(f"served {figures['video']}: p50 {served['p50']} ms, p95 {served['p95']} ms ({served['requests']} requests, one client)")
    diff = figures["max_abs_probability_difference"]
    lines.append(f"max |probability difference| vs CPU ({figures['cpu_runtime']}): served GPU {diff['served_gpu_vs_cpu']:.2e}, "
                 f"in-process GPU {diff['in_process_gpu_vs_cpu']:.2e}")
    if "people" in figures:
        lines.extend(people_report(figures["people"]))
    lines.append(f"total {figures['total_s']} s")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    problem = gpu_problem(args.gpu)
    if problem:
        print(f"gpu-check: nothing measured: {problem}. Run it on a machine with an NVIDIA GPU and its "
              f"driver (docs/gpu.md).")
        return NO_GPU
    if not args.video.is_file():
        print(f"gpu-check: {args.video} not found (--video a real video file)")
        return 1
    try:
        figures = run(args)
    except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
        print(f"gpu-check: failed: {type(exc).__name__}: {exc}")
        return 1
    print(report(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
