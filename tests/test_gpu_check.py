"""``python -m bench.gpu_check``: its arguments and the machine-without-a-GPU path (the measuring
path needs a GPU: it is run by hand on one, docs/gpu.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import gpu_check
from harness.paths import REPO


def test_defaults_measure_batches_1_2_4_8_on_the_readme_video() -> None:
    args = gpu_check.parse_args([])
    assert args.batch_sizes == [1, 2, 4, 8] and args.gpu == 0 and args.cpu_runtime == "torchscript"
    assert args.video.name == "tv__WUzgd7C1pWA.mp4"
    assert f"VIDEO      ?= ../shared/videos/{args.video.name}" in (REPO / "Makefile").read_text()


@pytest.mark.parametrize("text, sizes", [("8,1,4", [1, 4, 8]), ("16", [16]), ("1, 2", [1, 2])])
def test_batch_sizes_parse(text: str, sizes: list) -> None:
    assert gpu_check.parse_args(["--batch-sizes", text]).batch_sizes == sizes


@pytest.mark.parametrize("argv", [["--batch-sizes", "0"], ["--batch-sizes", "a,b"], ["--batch-sizes", "2,2"],
                                  ["--batch-sizes", ""], ["--repeats", "0"], ["--requests", "0"],
                                  ["--cpu-runtime", "tensorrt"]])
def test_bad_arguments_are_usage_errors(argv: list, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        gpu_check.parse_args(argv)
    assert exit_.value.code == 2 and "error:" in capsys.readouterr().err


def _no_run(*args: object, **kwargs: object) -> None:
    raise AssertionError("nothing may be exported, loaded or started without a GPU")


def test_without_a_gpu_it_says_so_and_exits_3_having_done_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu_check.subprocess, "run", _no_run)
    monkeypatch.setattr(gpu_check, "run", _no_run)
    assert gpu_check.main([]) == gpu_check.NO_GPU == 3
    out = capsys.readouterr().out
    assert out.startswith("gpu-check: nothing measured: no CUDA GPU is visible to torch") and "docs/gpu.md" in out


def test_a_gpu_torchserve_cannot_count_is_refused_too(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(gpu_check.shutil, "which", lambda name: None)
    monkeypatch.setattr(gpu_check, "run", _no_run)
    assert gpu_check.main([]) == 3
    assert "TorchServe cannot (it counts GPUs with nvidia-smi)" in capsys.readouterr().out
    assert gpu_check.main(["--gpu", "1"]) == 3
    assert "--gpu 1 but torch sees 1 GPU(s)" in capsys.readouterr().out


@pytest.mark.heavy  # a fresh interpreter importing torch: seconds of CPU
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the command would measure it")
def test_the_command_itself_exits_cleanly_here() -> None:
    done = subprocess.run([sys.executable, "-m", "bench.gpu_check"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 3 and "Traceback" not in done.stderr
    assert done.stdout.startswith("gpu-check: nothing measured:")


def test_report_and_difference() -> None:
    assert gpu_check.largest_difference({0: 0.5, 1: 0.5}, {0: 0.25, 1: 0.75}) == 0.25
    with pytest.raises(RuntimeError):
        gpu_check.largest_difference({0: 1.0}, {1: 1.0})
    figures = {
        "device": {"gpu": "G", "memory_gib": 80, "driver": "1", "torch": "t", "cuda": "13.0", "cudnn": 9},
        "runtime": "torchscript-cuda-fp32", "load_s": 3.0, "peak_gpu_memory_mib": 900, "video": "v.mp4",
        "forward_ms": {1: {"median_ms": 5.0, "min_ms": 4.0, "ms_per_view": 5.0, "views_per_s": 200.0},
                       8: {"median_ms": 20.0, "min_ms": 19.0, "ms_per_view": 2.5, "views_per_s": 400.0}},
        "served_ms": {"p50": 80.0, "p95": 90.0, "requests": 20}, "cpu_runtime": "torchscript-fp32",
        "max_abs_probability_difference": {"served_gpu_vs_cpu": 1e-5, "in_process_gpu_vs_cpu": 2e-6}, "total_s": 100.0,
    }
    text = gpu_check.report(figures)
    assert "    1       5.0 ms" in text and "    8      20.0 ms  (2.5 ms a view, 400.0 views/s)" in text
    assert "p50 80.0 ms" in text and "served GPU 1.00e-05" in text


@pytest.mark.slow
def test_rehearsal_of_every_stage_on_the_cpu(
    built: dict, shared_videos: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Every stage of the measuring path, with the CPU standing in for the GPU (the handler, given
    gpu_id 0 without CUDA, runs on the CPU; TorchServe's workers are CPU workers): the code a GPU
    machine runs first, rehearsed here. What it cannot rehearse: CUDA itself."""
    monkeypatch.setattr(gpu_check, "gpu_problem", lambda gpu: None)
    monkeypatch.setattr(gpu_check, "describe_gpu", lambda gpu: {
        "gpu": "CPU rehearsal", "memory_gib": 0, "driver": "-", "torch": torch.__version__, "cuda": None, "cudnn": None})
    monkeypatch.setattr(gpu_check, "worker_device", lambda gpu: torch.device("cpu"))
    monkeypatch.setattr(gpu_check, "on_gpu", lambda worker: True)
    figures_file = tmp_path / "gpu.json"
    status = gpu_check.main(["--batch-sizes", "1,2", "--repeats", "1", "--requests", "1", "--no-export",
                             "--people", str(tmp_path / "no_detector.pt"),  # stage 5 on a CPU: minutes
                             "--video", str(shared_videos / "tv__WUzgd7C1pWA.mp4"), "--json", str(figures_file)])
    out = capsys.readouterr().out
    assert status == 0, out
    import json

    figures = json.loads(figures_file.read_text())
    assert set(figures["forward_ms"]) == {"1", "2"}
    assert figures["served_ms"]["requests"] == 1 and figures["served_ms"]["p50"] > 0
    difference = figures["max_abs_probability_difference"]
    # CPU against CPU: the stand-ins for the GPU (in-process and served) are CPU workers on OpenVINO,
    # the CPU default (bf16 where the CPU has it, else fp32), against TorchScript fp32: close, not equal.
    assert 0 <= difference["in_process_gpu_vs_cpu"] < 0.05 and 0 <= difference["served_gpu_vs_cpu"] < 0.05
    assert "served tv__WUzgd7C1pWA.mp4: p50" in out
    assert f"people: skipped: {tmp_path / 'no_detector.pt'} not found" in out and figures["people"].keys() == {"skipped"}


# -- stage 5, people ------------------------------------------------------------------------------


def test_the_people_stage_is_skipped_saying_how_without_the_action_detector(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make mar` builds only the classifier: without the detector's file nothing is loaded, and the
    report says how to build it."""
    import harness.inproc
    from handler.people.model import ActionDetector

    assert gpu_check.parse_args([]).people == REPO / "build" / "slowfast_r50_detection.pt"
    monkeypatch.setattr(harness.inproc, "InProcessHandler", _no_run)
    monkeypatch.setattr(ActionDetector, "load", _no_run)
    people = gpu_check.people_stage(tmp_path / "slowfast_r50_detection.pt", 0, 1)
    assert set(people) == {"skipped"} and "make mar MODEL=slowfast_r50_detection" in people["skipped"]
    assert gpu_check.people_report(people) == [f"people: skipped: {people['skipped']}"]


def test_a_failing_people_stage_is_reported_in_place_of_its_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from handler.people.model import ActionDetector

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no kernel image is available (test)")

    pt = tmp_path / "slowfast_r50_detection.pt"
    pt.write_bytes(b"not read")
    monkeypatch.setattr(ActionDetector, "load", broken)
    people = gpu_check.people_stage(pt, 0, 1)
    assert people == {"failed": "RuntimeError: no kernel image is available (test)"}
    assert gpu_check.people_report(people) == ["people: failed: RuntimeError: no kernel image is available (test)"]


class _FakeDetector:
    """A loaded action detector's interface: records the box counts and input devices of each forward."""

    name, device = "torchscript-cuda-fp16", torch.device("cpu")
    contract = type("Contract", (), {"num_frames": 32, "alpha": 4})()

    def __init__(self) -> None:
        self.calls: list = []

    def infer(self, pathways: list, boxes: torch.Tensor) -> tuple:
        self.calls.append(([tuple(p.shape) for p in pathways], boxes.shape[0]))
        return torch.zeros(boxes.shape[0], 80), torch.zeros(boxes.shape[0], 80)


class _FakeFinder:
    name, device = "torchscript-cuda-fp32", torch.device("cpu")

    def __init__(self) -> None:
        self.frames: list = []

    def find(self, frame: torch.Tensor) -> tuple:
        self.frames.append((tuple(frame.shape), frame.dtype))
        return torch.zeros(0, 4), torch.zeros(0)


def test_the_people_figures_are_forwards_by_box_count_and_a_frame_of_the_person_detector() -> None:
    detector, finder = _FakeDetector(), _FakeFinder()
    figures = gpu_check.people_forward_ms(detector, repeats=2)
    assert list(figures["keyframe_ms"]) == ["1", "5", "20"] and all(ms >= 0 for ms in figures["keyframe_ms"].values())
    # 3 warm-up calls and 2 timed per box count, on the Kinetics-sized working clip.
    assert [boxes for _, boxes in detector.calls] == [1] * 5 + [5] * 5 + [20] * 5
    assert detector.calls[0][0] == [(1, 3, 8, 256, 340), (1, 3, 32, 256, 340)]
    assert (figures["runtime"], figures["clip"]) == ("torchscript-cuda-fp16", "340x256, 32 frames")
    person = gpu_check.person_detector_ms(finder, repeats=2)
    assert finder.frames == [((720, 1280, 3), torch.uint8)] * 5 and person["frame"] == "1280x720"


def test_the_people_report() -> None:
    run = {"precision": "fp16", "runtime": "torchscript-cuda-fp16", "device": "cuda:0", "clip": "340x256, 32 frames",
           "load_s": 4.2, "keyframe_ms": {"1": 12.0, "5": 12.5, "20": 14.25}, "max_abs_probability_difference_vs_cpu": 3e-3}
    people = {"file": "slowfast_r50_detection.pt", "cpu_runtime": "torchscript-fp32", "compared_boxes": 5, "runs": [run],
              "person_detector": {"runtime": "torchscript-cuda-fp32", "device": "cuda:0", "frame": "1280x720", "ms": 31.0}}
    lines = gpu_check.people_report(people)
    assert lines == [
        "people (slowfast_r50_detection.pt), a keyframe's forward by box count; max |probability difference| vs CPU "
        "(torchscript-fp32, 5 boxes):",
        "  torchscript-cuda-fp16 on cuda:0 (340x256, 32 frames; loaded in 4.2 s): 1: 12.0 ms, 5: 12.5 ms, 20: 14.2 ms; "
        "difference 3.00e-03",
        "  person detector torchscript-cuda-fp32 on cuda:0: 31.0 ms a 1280x720 frame",
    ]
    assert gpu_check.people_report({**people, "person_detector": None})[-1] == "  person detector: none packed"
