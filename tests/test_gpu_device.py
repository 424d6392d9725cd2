"""Device choice for GPU workers, checked on a CPU-only machine with a fake TorchServe context.

TorchServe hands each worker ``system_properties["gpu_id"]`` (an int, or None on CPU-only hosts);
the handler must place the model and its preprocessing on ``cuda:{gpu_id}``. No GPU exists here,
so CUDA availability is faked and the model load is replaced by a recorder: what is tested is
which device the handler asks for, not CUDA itself.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional

import pytest
import torch

from export.reference import EMBEDDING_SIZE, NUM_CLASSES
from handler import runtime as runtime_module
from handler import runtime_base, runtime_torchscript
from handler import slowfast_handler as handler_module
from handler.runtime import choose_device
from harness.context import FakeContext
from harness.paths import MODEL


@pytest.mark.parametrize(
    "gpu_id, cuda_available, expected",
    [
        (0, True, "cuda:0"),
        (3, True, "cuda:3"),
        ("1", True, "cuda:1"),   # TorchServe sends an int; a string from a config must not break it
        (None, True, "cpu"),     # a CPU worker on a GPU host (number_of_gpu=0, deviceType cpu)
        (0, False, "cpu"),       # gpu_id set but CUDA unusable (driver missing): fall back, don't crash
        (None, False, "cpu"),
    ],
)
def test_choose_device(gpu_id: Any, cuda_available: bool, expected: str) -> None:
    assert choose_device(gpu_id, cuda_available) == torch.device(expected)


def test_choose_device_asks_torch_when_not_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert choose_device(2) == torch.device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_device(2) == torch.device("cpu")


def fake_context(model_dir: Path, gpu_id: Optional[int], min_workers: int = 2) -> FakeContext:
    """A worker's context without a metrics cache (metrics no-op), over a model file in ``model_dir``
    that holds the default contract (the handler reads its task before loading the runtime, which
    these tests stand in for)."""
    from harness.fuzz import target_model

    target_model(model_dir)
    return FakeContext(
        model_dir, 4, {"minWorkers": min_workers, "handler": {"warmup": False, "cpu_threads": 0}}, gpu_id=gpu_id
    )


class _RecordedLoad:
    """Stands in for ``load_runtime``: records the device and returns a runtime-shaped object."""

    def __init__(self, contract: Any) -> None:
        self.calls: List[Dict[str, Any]] = []
        self.contract = contract

    def __call__(self, path: Path, device: torch.device, options: Any, workers: int = 1) -> SimpleNamespace:
        self.calls.append({"path": Path(path), "device": device, "options": options, "workers": workers})
        is_cuda = device.type == "cuda"
        return SimpleNamespace(
            contract=self.contract, device=device,
            name=f"torchscript-{device.type}",
            micro_batch=options.micro_batch_cuda if is_cuda else options.micro_batch_cpu,
        )


@pytest.fixture
def fake_contract() -> Any:
    """The real contract object (not a look-alike), so the handler reads every field it would in a worker."""
    from export.reference import default_contract

    return default_contract()


@pytest.mark.parametrize("gpu_id", [0, 1, 3])
def test_initialize_places_model_on_assigned_gpu(
    gpu_id: int, tmp_path: Path, fake_contract: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    load = _RecordedLoad(fake_contract)
    monkeypatch.setattr(handler_module, "load_runtime", load)
    threads: List[int] = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)

    handler = handler_module.SlowFastHandler()
    handler.initialize(fake_context(tmp_path, gpu_id))

    expected = torch.device(f"cuda:{gpu_id}")
    assert handler.device == expected
    assert [call["device"] for call in load.calls] == [expected]
    assert load.calls[0]["path"] == tmp_path / f"{MODEL}.pt"
    # GPU workers batch views by micro_batch_cuda and leave the CPU thread pool alone.
    assert handler.runtime.micro_batch == handler.options.micro_batch_cuda
    assert threads == []


def test_initialize_cpu_worker_when_no_gpu_assigned(
    tmp_path: Path, fake_contract: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU host, but this worker got none
    load = _RecordedLoad(fake_contract)
    monkeypatch.setattr(handler_module, "load_runtime", load)
    threads: List[int] = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    monkeypatch.setattr(runtime_base, "usable_cores", lambda: 8)

    handler = handler_module.SlowFastHandler()
    handler.initialize(fake_context(tmp_path, None, min_workers=2))

    assert handler.device == torch.device("cpu")
    assert [call["device"] for call in load.calls] == [torch.device("cpu")]
    assert handler.runtime.micro_batch == handler.options.micro_batch_cpu
    assert threads == [4]  # 8 cores shared by minWorkers=2
    assert load.calls[0]["workers"] == 2  # OpenVINO sizes its threads from the same count


def test_initialize_gpu_id_without_cuda_falls_back_to_cpu(
    tmp_path: Path, fake_contract: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    load = _RecordedLoad(fake_contract)
    monkeypatch.setattr(handler_module, "load_runtime", load)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)

    handler = handler_module.SlowFastHandler()
    handler.initialize(fake_context(tmp_path, 0))

    assert handler.device == torch.device("cpu")


def test_preprocessing_follows_the_model_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """Frames go to the worker's device (pinned, non-blocking) on GPU and stay put on CPU."""
    handler = handler_module.SlowFastHandler()
    frames = torch.zeros(2, 4, 4, 3, dtype=torch.uint8)

    handler.device = torch.device("cpu")
    assert handler._to_device(frames) is frames

    moves: List[Dict[str, Any]] = []

    class _Pinned:
        def to(self, device: torch.device, non_blocking: bool = False) -> str:
            moves.append({"device": device, "non_blocking": non_blocking})
            return "moved"

    class _Frames:
        device = torch.device("cpu")

        def pin_memory(self) -> _Pinned:
            return _Pinned()

    handler.device = torch.device("cuda:2")
    assert handler._to_device(_Frames()) == "moved"
    assert moves == [{"device": torch.device("cuda:2"), "non_blocking": True}]


@pytest.mark.slow
@pytest.mark.parametrize("cpu_runtime", ["openvino", "torchscript"])
def test_initialize_real_model_on_cpu(
    built: Dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpu_runtime: str
) -> None:
    """The real initialize path with the real file on a GPU host: a worker given no GPU (gpu_id None)
    loads a CPU runtime and answers from CPU tensors (a CUDA load would fail here, with no CUDA)."""
    from handler.runtime_base import dummy_pathways

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / built["pt"].name).symlink_to(built["pt"])
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # keep this test process's threads
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    handler = handler_module.SlowFastHandler()
    context = FakeContext(model_dir, 1, {"minWorkers": 1, "handler": {"warmup": False, "cpu_runtime": cpu_runtime}})
    handler.initialize(context)
    assert handler.device == torch.device("cpu")
    expected = "openvino-" if cpu_runtime == "openvino" else "torchscript-fp32"
    assert handler.runtime.name.startswith(expected)
    outputs = handler.runtime.infer(dummy_pathways(handler.contract))
    probabilities, embeddings = outputs.probabilities, outputs.embedding
    assert probabilities.device.type == embeddings.device.type == "cpu" and probabilities.shape[0] == 1


class _FakeScripted:
    """Stands in for the scripted module on a GPU: records what ``forward_with_embedding`` saw."""

    def __init__(self) -> None:
        self.calls: List[Dict[str, Any]] = []
        self.memory_format: Optional[torch.memory_format] = None

    def eval(self) -> "_FakeScripted":
        return self

    def to(self, memory_format: torch.memory_format) -> "_FakeScripted":
        self.memory_format = memory_format
        return self

    def forward_with_embedding(self, pathways: List[torch.Tensor]) -> Any:
        self.calls.append({
            "channels_last": all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in pathways),
            "autocast": torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None,
            "shapes": [tuple(p.shape) for p in pathways],
        })
        batch = pathways[0].shape[0]
        # fp16 outputs, as autocast produces on a GPU.
        return torch.randn(batch, NUM_CLASSES).half(), torch.rand(batch, EMBEDDING_SIZE).half()


@pytest.mark.parametrize("precision, dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", None)])
def test_gpu_runtime_runs_autocast_channels_last_and_returns_float32_cpu(
    precision: str, dtype: Optional[torch.dtype], monkeypatch: pytest.MonkeyPatch
) -> None:
    """GPU load path with a fake module: name, micro-batch, channels-last, autocast, float32 CPU outputs."""
    from export.reference import default_contract
    from handler.serve_settings import ServeOptions

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # lets torch.autocast("cuda") switch on
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    fake = _FakeScripted()
    contract = default_contract()
    monkeypatch.setattr(runtime_torchscript, "read_model", lambda path, device: (fake, contract))
    # Warm-up input built on CPU (no CUDA here); the device it is asked for is recorded.
    asked: List[torch.device] = []
    real_dummy = runtime_torchscript.dummy_pathways
    monkeypatch.setattr(runtime_torchscript, "dummy_pathways",
                        lambda c, device, batch=1: asked.append(device) or real_dummy(c, torch.device("cpu"), batch))
    options = ServeOptions(precision=precision, optimize=False, warmup=True, cpu_runtime="openvino")
    from handler.runtime_openvino import OpenVinoRuntime

    def not_on_gpu(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("cpu_runtime applies to CPU workers only: GPU workers keep torch")

    monkeypatch.setattr(OpenVinoRuntime, "load", not_on_gpu)

    runtime = runtime_module.load_runtime(Path("model.pt"), torch.device("cuda:1"), options, workers=2)

    assert runtime.name == f"torchscript-cuda-{precision}"
    assert runtime.micro_batch == options.micro_batch_cuda and fake.memory_format == torch.channels_last_3d
    assert asked == [torch.device("cuda:1")]  # warm-up on the worker's GPU
    fast = torch.randn(3, 3, 32, 16, 16)
    outputs = runtime.infer([fast[:, :, ::4], fast])
    probabilities, embeddings = outputs.probabilities, outputs.embedding
    call = fake.calls[-1]
    assert call["channels_last"] and call["autocast"] == dtype and call["shapes"][0] == (3, 3, 8, 16, 16)
    assert probabilities.dtype == embeddings.dtype == torch.float32
    assert probabilities.device.type == embeddings.device.type == "cpu"
    assert probabilities.shape == (3, NUM_CLASSES) and embeddings.shape == (3, EMBEDDING_SIZE)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(3))
