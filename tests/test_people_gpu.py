"""Both detection networks of an action detector on a GPU worker, checked on a CPU-only machine.

As tests/test_gpu_device.py does for the classifier: CUDA's availability is faked, the scripted
networks are stand-ins that record what they were given, and every copy to a device goes through
``to_device``, replaced here by a recorder that leaves the tensor where it is (there is no GPU to
copy to). The stand-ins answer with ``OnGpu`` tensors (CPU tensors whose ``cpu()`` is recorded and
gives a plain tensor), so an answer that never came back to the CPU would stay an ``OnGpu``.
What is tested is which device each network is put on and fed on, not CUDA itself: a GPU run must
check the real thing (bench/gpu_check.py's people stage).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
import torch

from handler import slowfast_handler as handler_module
from handler.people import model as people_model
from handler.people import persons as people_persons
from handler.people import run as people_run
from handler.people.run import score_keyframe
from harness.context import FakeContext, record_line

NAME = "slowfast_r50_detection"
PERSON_LABEL = 1


class OnGpu(torch.Tensor):
    """A CPU tensor standing in for one on a GPU: ``cpu()`` is recorded in ``COPIES_BACK`` and
    gives a plain tensor (operations on an ``OnGpu`` give ``OnGpu``s, as a GPU tensor's stay there)."""

    def cpu(self, *args: Any, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        COPIES_BACK.append(tuple(self.shape))
        return self.as_subclass(torch.Tensor)


COPIES_BACK: List[Tuple[int, ...]] = []


class FakeActionNet:
    """The scripted action detector: records each forward's input shapes, dtypes and autocast."""

    def __init__(self, on_gpu: bool, broken: bool = False) -> None:
        self.on_gpu, self.broken = on_gpu, broken
        self.calls: List[Dict[str, Any]] = []

    def forward_with_embedding(self, pathways: List[torch.Tensor], boxes: torch.Tensor) -> Tuple[Any, Any]:
        if self.broken:
            raise RuntimeError("Could not run 'torchvision::roi_align' with arguments from the 'CUDA' backend (test)")
        self.calls.append({
            "shapes": [tuple(p.shape) for p in pathways], "dtypes": [p.dtype for p in pathways],
            "boxes": tuple(boxes.shape),
            "autocast": torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None,
        })
        count = boxes.shape[0]
        logits = torch.arange(count * 80, dtype=torch.float32).reshape(count, 80).div(1000) - 1  # per box, per class
        feature = torch.zeros(count, 4)
        if not self.on_gpu:
            return logits, feature
        # Left on the GPU, in fp16 as autocast leaves them.
        return logits.half().as_subclass(OnGpu), feature.half().as_subclass(OnGpu)


class FakePersonNet:
    """The scripted person detector in torchvision's output format: two persons over the threshold
    (the less confident first), one under it, a car."""

    def __init__(self, on_gpu: bool) -> None:
        self.on_gpu = on_gpu
        self.seen: List[Tuple[Tuple[int, ...], torch.dtype]] = []

    def eval(self) -> "FakePersonNet":
        return self

    def __call__(self, images: List[torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[Dict[str, torch.Tensor]]]:
        self.seen.append((tuple(images[0].shape), images[0].dtype))
        found = {"boxes": torch.tensor([[1.0, 2, 30, 40], [5, 6, 50, 60], [0, 0, 9, 9], [3, 3, 7, 7]]),
                 "labels": torch.tensor([PERSON_LABEL, PERSON_LABEL, PERSON_LABEL, 3]),
                 "scores": torch.tensor([0.8, 0.95, 0.5, 0.99])}
        if self.on_gpu:
            found = {key: value.as_subclass(OnGpu) for key, value in found.items()}
        return {}, [found]


def detection_contract() -> Any:
    from export.variants import VARIANTS, contract_for, read_label_file
    from handler.contract import PersonDetector

    variant = VARIANTS[NAME]
    contract = contract_for(variant, read_label_file(variant.labels_file))
    persons = PersonDetector(file=f"{NAME}.persons.pt", architecture="fixed boxes (test)", label_index=PERSON_LABEL,
                             score_threshold=0.75, weights="none")
    return dataclasses.replace(contract, detection=dataclasses.replace(contract.detection, person_detector=persons))


class Worker:
    """What a worker loads, recorded: devices asked of the loaders, copies to a device, the stand-ins.

    ``broken_on_gpu``: the stand-ins fail on a GPU (the action detector's first forward, the person
    detector's load), as with a torchvision built without CUDA kernels."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, broken_on_gpu: bool = False) -> None:
        self.contract = detection_contract()
        self.model_devices: List[torch.device] = []
        self.person_devices: List[torch.device] = []
        self.moves: List[Dict[str, Any]] = []
        self.action_nets: List[FakeActionNet] = []
        self.person_nets: List[FakePersonNet] = []
        COPIES_BACK.clear()

        def read_model(path: Path, device: torch.device) -> Tuple[FakeActionNet, Any]:
            self.model_devices.append(device)
            self.action_nets.append(FakeActionNet(on_gpu=device.type == "cuda",
                                                  broken=broken_on_gpu and device.type == "cuda"))
            return self.action_nets[-1], self.contract

        def jit_load(path: str, map_location: Any = None, **kwargs: Any) -> FakePersonNet:
            device = torch.device(map_location)
            self.person_devices.append(device)
            if broken_on_gpu and device.type == "cuda":
                raise RuntimeError("CUDA error: no kernel image is available for execution on the device (test)")
            self.person_nets.append(FakePersonNet(on_gpu=device.type == "cuda"))
            return self.person_nets[-1]

        def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
            self.moves.append({"shape": tuple(tensor.shape), "dtype": tensor.dtype, "device": device})
            return tensor

        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # lets torch.autocast("cuda") switch on
        monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # a CPU worker's: keep this process's
        monkeypatch.setattr(handler_module, "contract_of", lambda path: self.contract)
        monkeypatch.setattr(people_model, "read_model", read_model)
        monkeypatch.setattr(people_persons.torch.jit, "load", jit_load)
        for module in (people_model, people_persons, people_run):
            monkeypatch.setattr(module, "to_device", to_device)

    def start(self, directory: Path, gpu_id: Optional[int], **settings: Any) -> Any:
        """A handler initialized as a worker given ``gpu_id`` (None: a CPU worker)."""
        handler_settings = {"warmup": False, "optimize": False, "cpu_runtime": "torchscript", **settings}
        context = FakeContext(directory, 1, {"minWorkers": 1, "handler": handler_settings}, gpu_id=gpu_id,
                              serialized=f"{NAME}.pt")
        handler = handler_module.SlowFastHandler(send_line=record_line)
        handler.initialize(context)
        assert handler.people is not None
        return handler.people


WINDOW = torch.randint(0, 256, (32, 64, 80, 3), dtype=torch.uint8)  # a keyframe's window (T, H, W, 3)
BOXES = torch.tensor([[1.0, 2, 30, 40], [10, 12, 70, 60]])  # two persons in its working pixels
FRAME = torch.randint(0, 256, (72, 96, 3), dtype=torch.uint8)  # the person detector's frame (H, W, 3)


@pytest.mark.parametrize("gpu_id, precision, autocast", [(2, "fp16", torch.float16), (0, "fp32", None)])
def test_a_gpu_worker_runs_both_networks_on_its_gpu(gpu_id: int, precision: str, autocast: Optional[torch.dtype],
                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    worker = Worker(monkeypatch)
    people = worker.start(tmp_path, gpu_id, precision=precision)
    gpu = torch.device(f"cuda:{gpu_id}")

    # Both loaded for the worker's GPU (the handler's choose_device), each named for what runs it.
    assert worker.model_devices == [gpu] and worker.person_devices == [gpu]
    assert (people.model.device, people.model.name) == (gpu, f"torchscript-cuda-{precision}")
    assert (people.finder.device, people.finder.name) == (gpu, "torchscript-cuda-fp32")
    # Each ran once at load, on the GPU, without being asked to warm up: the check that it runs there.
    (check,) = worker.action_nets[0].calls
    assert check["autocast"] == autocast and check["boxes"] == (1, 5)
    assert len(worker.person_nets[0].seen) == 1
    assert {move["device"] for move in worker.moves} == {gpu}

    # A keyframe: the uint8 window (not float pathways) and the boxes go to the GPU; the scores come back.
    worker.moves.clear()
    COPIES_BACK.clear()
    scored = score_keyframe(people.model, WINDOW, BOXES)
    assert worker.moves[0] == {"shape": (32, 64, 80, 3), "dtype": torch.uint8, "device": gpu}
    assert {"shape": (2, 5), "dtype": torch.float32, "device": gpu} in worker.moves
    assert {move["device"] for move in worker.moves} == {gpu}
    call = worker.action_nets[0].calls[-1]
    assert call["shapes"] == [(1, 3, 8, 64, 80), (1, 3, 32, 64, 80)] and call["dtypes"] == [torch.float32] * 2
    assert call["autocast"] == autocast and call["boxes"] == (2, 5)
    assert COPIES_BACK == [(2, 80)]  # the logits, once
    for out in (scored.logits, scored.probabilities):
        assert type(out) is torch.Tensor and out.dtype == torch.float32 and out.shape == (2, 80)
    assert torch.equal(scored.probabilities, torch.sigmoid(scored.logits))

    # The person detector: the uint8 frame goes to the GPU; the confident persons' boxes come back.
    worker.moves.clear()
    COPIES_BACK.clear()
    boxes, scores = people.finder.find(FRAME)
    assert worker.moves == [{"shape": (72, 96, 3), "dtype": torch.uint8, "device": gpu}]
    assert worker.person_nets[0].seen[-1] == ((3, 72, 96), torch.float32)
    assert sorted(COPIES_BACK) == [(2,), (2, 4)]
    assert type(boxes) is torch.Tensor and type(scores) is torch.Tensor
    assert boxes.tolist() == [[5, 6, 50, 60], [1, 2, 30, 40]] and scores.tolist() == pytest.approx([0.95, 0.8])


def test_a_cpu_worker_keeps_both_networks_on_the_cpu_and_copies_nothing(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU given (a CPU worker on a GPU host): as before this change, no check forward at load
    without warm-up, and nothing is copied anywhere."""
    worker = Worker(monkeypatch)
    people = worker.start(tmp_path, None)
    cpu = torch.device("cpu")
    assert worker.model_devices == [cpu] and worker.person_devices == [cpu]
    assert (people.model.device, people.model.name) == (cpu, "torchscript-fp32")
    assert (people.finder.device, people.finder.name) == (cpu, "torchscript-fp32")
    assert worker.action_nets[0].calls == [] and worker.person_nets[0].seen == []

    scored = score_keyframe(people.model, WINDOW, BOXES)
    boxes, scores = people.finder.find(FRAME)
    assert {move["device"] for move in worker.moves} == {cpu} and COPIES_BACK == []
    assert worker.action_nets[0].calls[-1]["autocast"] is None
    assert scored.probabilities.shape == (2, 80) and boxes.tolist() == [[5, 6, 50, 60], [1, 2, 30, 40]]


def test_the_real_to_device_leaves_a_cpu_workers_tensors_untouched() -> None:
    """CPU workers' tensors are the very same objects (not copies): their scores cannot change."""
    from handler.runtime_base import to_device

    assert to_device(WINDOW, torch.device("cpu")) is WINDOW


def test_a_gpu_that_cannot_run_them_leaves_both_on_the_cpu_saying_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    worker = Worker(monkeypatch, broken_on_gpu=True)
    with caplog.at_level(logging.WARNING, logger="handler.people"):
        people = worker.start(tmp_path, 0, precision="fp16")
    cuda, cpu = torch.device("cuda:0"), torch.device("cpu")
    assert worker.model_devices == [cuda, cpu] and worker.person_devices == [cuda, cpu]
    assert (people.model.device, people.model.name) == (cpu, "torchscript-fp32")
    assert (people.finder.device, people.finder.name) == (cpu, "torchscript-fp32")
    assert "the action detector cannot run on cuda:0" in caplog.text and "'torchvision::roi_align'" in caplog.text
    assert "the person detector cannot run on cuda:0" in caplog.text and "no kernel image" in caplog.text
    scored = score_keyframe(people.model, WINDOW, BOXES)  # and it answers, on the CPU
    assert scored.probabilities.shape == (2, 80) and worker.moves[-1]["device"] == cpu
