"""Person-level actions' cost (issue 27): a keyframe's forward with 1, 5 and 20 boxes against the
classifier's forward, and the person detector's forward, on this CPU.

The action detector (``slowfast_r50_detection``, random weights: the cost does not depend on
them) runs as a worker runs it (``handler.people.model.ActionDetector``: frozen TorchScript) on a
Kinetics-sized working clip (32 frames of 256x340, no crop); the classifier's forward is the
default runtime's on its 256x256 crop. The person detector is torchvision's
``fasterrcnn_resnet50_fpn`` scripted as the exporter packs it, on one 256x340 frame (random
weights: its box head keeps fewer proposals than a trained one, so this is a lower bound).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

import torch

from bench.util import progress
from harness.inproc import InProcessHandler

BOX_COUNTS = (1, 5, 20)
HEIGHT, WIDTH = 256, 340


def _median_ms(call: Callable[[], Any], reps: int, warmup: int) -> Dict[str, float]:
    times: List[float] = []
    for rep in range(warmup + reps):
        started = time.perf_counter()
        call()
        if rep >= warmup:
            times.append((time.perf_counter() - started) * 1000)
    return {"median": statistics.median(times), "min": min(times)}


def _boxes(count: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(count)
    corners = torch.rand(count, 2, 2, generator=generator) * torch.tensor([WIDTH - 1.0, HEIGHT - 1.0])
    low, high = corners.amin(1), corners.amax(1) + 1
    return torch.cat([torch.zeros(count, 1), low, high.minimum(torch.tensor([WIDTH - 1.0, HEIGHT - 1.0]))], 1)


def compare(classifier: InProcessHandler, reps: int, warmup: int, box_counts: Sequence[int] = BOX_COUNTS) -> Dict[str, Any]:
    """``{keyframe_ms: {boxes: {median, min}}, classifier_forward_ms, detector_ms, runtime, vs_classifier}``."""
    from export.person_detector import build_person_detector
    from export.save import save_with_contract
    from export.scriptable_detection import script_detector
    from export.variants import VARIANTS, build, contract_for, read_label_file
    from handler.serve_settings import ServeOptions
    from handler.people.model import ActionDetector

    variant = VARIANTS["slowfast_r50_detection"]
    contract = contract_for(variant, read_label_file(variant.labels_file), weights="random (timing only)")
    with tempfile.TemporaryDirectory(prefix="bench-people-") as scratch:
        path = Path(scratch) / f"{variant.name}.pt"
        save_with_contract(script_detector(build(variant, contract.num_classes)), contract, path)
        model = ActionDetector.load(path, ServeOptions(warmup=True, cpu_runtime="torchscript"))
    fast = torch.randn(1, 3, contract.num_frames, HEIGHT, WIDTH)
    pathways = [fast[:, :, :: contract.alpha].contiguous(), fast]
    keyframe: Dict[str, Dict[str, float]] = {}
    for count in box_counts:
        boxes = _boxes(count)
        keyframe[str(count)] = _median_ms(lambda: model.infer(pathways, boxes), reps, warmup)
        progress(f"  a keyframe with {count} box(es): {keyframe[str(count)]['median']:,.0f} ms")
    classifier_pathways = classifier.dummy_pathways(1)
    forward = _median_ms(lambda: classifier.forward_ms(classifier_pathways), reps, warmup)
    detector = torch.jit.script(build_person_detector())
    frame = torch.rand(3, HEIGHT, WIDTH)
    with torch.inference_mode():
        detector_ms = _median_ms(lambda: detector([frame]), reps, max(warmup, 2))  # the profiling executor's 2 runs
    progress(f"  classifier forward {forward['median']:,.0f} ms ({classifier.runtime.name}); "
             f"person detector {detector_ms['median']:,.0f} ms")
    return {
        "keyframe_ms": keyframe, "runtime": model.name, "frame": f"{WIDTH}x{HEIGHT}, {contract.num_frames} frames",
        "classifier_forward_ms": forward, "classifier_runtime": classifier.runtime.name,
        "detector_ms": detector_ms,
        "vs_classifier": {count: v["median"] / forward["median"] for count, v in keyframe.items()},
    }
