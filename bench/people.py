"""Person-level actions' cost (issue 27): a keyframe's forward with 1, 5 and 20 boxes against the
classifier's forward, and the person detector's forward, on this CPU.

The action detector (``slowfast_r50_detection``, random weights: the cost does not depend on
them) runs as a worker runs it (``handler.people.model.ActionDetector`` with the default settings:
OpenVINO on CPU, TorchScript if that fails; the runtime is reported) on a Kinetics-sized working
clip (32 frames of 256x340, no crop); the classifier's forward is the default runtime's on its
256x256 crop. The person detector is torchvision's ``fasterrcnn_resnet50_fpn`` scripted as the
exporter packs it (random weights: its box head keeps fewer proposals than a trained one, so
these are lower bounds), on the frames the server gives it (``PersonFinder.frame_short_side``:
the keyframe at the video's resolution, at most what its transform resizes to) and, beside them,
a 720p video's working frame (what it saw before): its transform brings every frame to short
side 800 (long side <= 1333), so the cost hardly depends on the frame given. The second decode
that the full-resolution frame costs is measured on a real 720p video.
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
# (label, width, height) of frames given to the person detector.
DETECTOR_FRAMES = (
    ("340x256 (a Kinetics keyframe, its full resolution)", 340, 256),
    ("455x256 (a 720p keyframe's working frame: what it saw before)", 455, 256),
    ("1280x720 (a 720p keyframe, its full resolution)", 1280, 720),
    ("1333x749 (a 1080p keyframe, shrunk as its transform would)", 1333, 749),
)
DECODE_VIDEO = "mp__big_buck_bunny_432_433.webm"  # 1280x720, 1 s


def median_ms(call: Callable[[], Any], reps: int, warmup: int) -> Dict[str, float]:
    """``{median, min}`` ms of ``reps`` calls after ``warmup`` untimed ones."""
    times: List[float] = []
    for rep in range(warmup + reps):
        started = time.perf_counter()
        call()
        if rep >= warmup:
            times.append((time.perf_counter() - started) * 1000)
    return {"median": statistics.median(times), "min": min(times)}


def random_boxes(count: int) -> torch.Tensor:
    """``count`` seeded (N, 5) boxes ``(0, x1, y1, x2, y2)`` inside the WIDTH x HEIGHT working clip."""
    generator = torch.Generator().manual_seed(count)
    corners = torch.rand(count, 2, 2, generator=generator) * torch.tensor([WIDTH - 1.0, HEIGHT - 1.0])
    low, high = corners.amin(1), corners.amax(1) + 1
    return torch.cat([torch.zeros(count, 1), low, high.minimum(torch.tensor([WIDTH - 1.0, HEIGHT - 1.0]))], 1)


def compare(classifier: InProcessHandler, reps: int, warmup: int, box_counts: Sequence[int] = BOX_COUNTS) -> Dict[str, Any]:
    """``{keyframe_ms: {boxes: {median, min}}, classifier_forward_ms, detector_ms (a 720p keyframe),
    detector_by_frame_ms: {frame: {median, min}}, persons_frame_decode_ms, runtime, vs_classifier}``."""
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
        model = ActionDetector.load(path, ServeOptions(warmup=True))
    progress(f"  action detector runtime: {model.name}")
    fast = torch.randn(1, 3, contract.num_frames, HEIGHT, WIDTH)
    pathways = [fast[:, :, :: contract.alpha].contiguous(), fast]
    keyframe: Dict[str, Dict[str, float]] = {}
    for count in box_counts:
        boxes = random_boxes(count)
        keyframe[str(count)] = median_ms(lambda: model.infer(pathways, boxes), reps, warmup)
        progress(f"  a keyframe with {count} box(es): {keyframe[str(count)]['median']:,.0f} ms")
    classifier_pathways = classifier.dummy_pathways(1)
    forward = median_ms(lambda: classifier.forward_ms(classifier_pathways), reps, warmup)
    progress(f"  classifier forward {forward['median']:,.0f} ms ({classifier.runtime.name})")
    detector = torch.jit.script(build_person_detector())
    by_frame: Dict[str, Dict[str, float]] = {}
    with torch.inference_mode():
        for label, width, height in DETECTOR_FRAMES:
            frame = torch.rand(3, height, width)
            # max(warmup, 2): the profiling executor's two optimizing runs
            by_frame[label] = median_ms(lambda: detector([frame]), reps, max(warmup, 2))
            progress(f"  person detector on {label}: {by_frame[label]['median']:,.0f} ms")
    return {
        "keyframe_ms": keyframe, "runtime": model.name, "frame": f"{WIDTH}x{HEIGHT}, {contract.num_frames} frames",
        "classifier_forward_ms": forward, "classifier_runtime": classifier.runtime.name,
        "detector_ms": by_frame[DETECTOR_FRAMES[2][0]], "detector_by_frame_ms": by_frame,
        "persons_frame_decode_ms": persons_frame_decode(reps, warmup),
        "vs_classifier": {count: v["median"] / forward["median"] for count, v in keyframe.items()},
    }


def persons_frame_decode(reps: int, warmup: int) -> Dict[str, Any]:
    """A keyframe's decode without and with the person detector's full-resolution frame (the second
    decode the server does when it finds the persons), on a real 720p video; None without it."""
    from handler.decoding import DecodeBudget, DecodeLimits, VideoDecoder
    from handler.people.decode import PersonsFrames, decode_keyframes
    from handler.people.persons import PersonFinder
    from handler.people.plan import Keyframe
    from harness.paths import SHARED_VIDEOS

    source = SHARED_VIDEOS / DECODE_VIDEO
    if not source.is_file():
        return {}
    video = source.read_bytes()
    limits = DecodeLimits(max_frame_pixels=8192 * 8192, max_decode_seconds=600.0)
    sizes = PersonFinder(module=None, detector=None, min_size=800, max_size=1333)  # type: ignore[arg-type]

    def decode(with_persons: bool) -> None:
        budget = DecodeBudget(600.0)
        persons = PersonsFrames(video, limits, budget, sizes.frame_short_side) if with_persons else None
        with VideoDecoder(video, limits, 256, budget=budget) as decoder:
            list(decode_keyframes(decoder, [Keyframe(0.5, (0.0, 1.0))], num_frames=32, short_side=256,
                                  max_aspect_ratio=limits.max_aspect_ratio, persons=persons))

    figures = {"video": f"{DECODE_VIDEO} (1280x720, 1 s window)",
               "window_only": median_ms(lambda: decode(False), reps, warmup),
               "with_persons_frame": median_ms(lambda: decode(True), reps, warmup)}
    progress(f"  decode of a keyframe's window: {figures['window_only']['median']:,.0f} ms; with the detector's "
             f"1280x720 frame: {figures['with_persons_frame']['median']:,.0f} ms")
    return figures
