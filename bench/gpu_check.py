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
   ``--cpu-runtime``: TorchScript fp32 by default, the exported model's own arithmetic).

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
from harness.paths import MAR, PT, REPO, SHARED_VIDEOS

NO_GPU = 3
DEFAULT_VIDEO = SHARED_VIDEOS / "tv__WUzgd7C1pWA.mp4"  # the README's curl video (Makefile VIDEO)


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
