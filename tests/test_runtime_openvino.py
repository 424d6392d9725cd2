"""The OpenVINO CPU runtime: precision choice, options, infer shapes, micro-batches and streams,
the IR cache, the fallback to TorchScript, and no telemetry (issue 10).

Most tests run a tiny scripted model with SlowFast's interface (``forward_with_embedding`` on
``[slow, fast]``) and a small contract, so conversion takes a second; the real model's numbers
are tests/test_runtime_fidelity.py's job.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch

from export.reference import default_contract
from export.save import save_with_contract
from handler.serve_settings import ConfigError, ServeOptions
from handler.runtime import load_runtime
from handler.runtime_base import dummy_pathways
from handler.runtime_torchscript import TorchScriptRuntime
from handler.runtime_openvino import OpenVinoRuntime, choose_precision, cpu_flags
from harness.paths import REPO

CLASSES, EMBEDDING = 5, 6


class Tiny(torch.nn.Module):
    """SlowFast's scripted interface at toy size: (logits (B,5), embedding (B,6))."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.slow = torch.nn.Conv3d(3, 4, 3, padding=1)
        self.fast = torch.nn.Conv3d(3, 2, 3, padding=1)
        self.proj = torch.nn.Linear(EMBEDDING, CLASSES)

    @torch.jit.export
    def forward_with_embedding(self, x: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        feature = torch.cat([self.slow(x[0]).relu().mean((2, 3, 4)), self.fast(x[1]).relu().mean((2, 3, 4))], 1)
        return self.proj(feature), feature

    def forward(self, x: List[torch.Tensor]) -> torch.Tensor:
        return self.forward_with_embedding(x)[0]


@pytest.fixture(scope="module")
def tiny_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    contract = dataclasses.replace(
        default_contract(), num_frames=8, alpha=4, short_side=16, crop_size=16,
        labels=tuple(f"class {i}" for i in range(CLASSES)), embedding_size=EMBEDDING,
    )
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    save_with_contract(torch.jit.script(Tiny().eval()), contract, path)
    return path


def fresh_copy(pt: Path, directory: Path) -> Path:
    """The .pt in a directory of its own: no IR cached beside it yet."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / pt.name).symlink_to(pt)
    return directory / pt.name


def random_views(contract, batch: int) -> List[torch.Tensor]:
    torch.manual_seed(batch)
    return [torch.randn_like(p) for p in dummy_pathways(contract, batch=batch)]


def torch_reference(pt: Path, views: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    scripted = torch.jit.load(str(pt))
    with torch.inference_mode():
        logits, embedding = scripted.forward_with_embedding(views)
    return torch.softmax(logits, 1), embedding


# -- precision ---------------------------------------------------------------------------------

SAPPHIRE = frozenset({"avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile"})
COOPER = frozenset({"avx512f", "avx512_vnni", "avx512_bf16"})
SKYLAKE = frozenset({"avx512f", "avx512_vnni", "avx2"})
AMX_ONLY = frozenset({"avx2", "amx_bf16"})


@pytest.mark.parametrize("setting, flags, expected", [
    ("auto", SAPPHIRE, "bf16"), ("auto", COOPER, "bf16"), ("auto", AMX_ONLY, "bf16"),
    ("auto", SKYLAKE, "fp32"), ("auto", frozenset(), "fp32"),
    ("fp32", SAPPHIRE, "fp32"), ("bf16", SKYLAKE, "bf16"),
])
def test_precision_follows_the_cpu_flags(setting: str, flags: frozenset, expected: str) -> None:
    precision, why = choose_precision(setting, flags)
    assert precision == expected
    assert setting in why  # the log line says which setting chose it
    if setting == "auto" and expected == "bf16":
        assert any(flag in why for flag in ("avx512_bf16", "amx_bf16"))


def test_cpu_flags_are_read_from_cpuinfo_text() -> None:
    text = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse avx512_bf16 amx_bf16\nbugs\t: spectre\n"
    assert cpu_flags(text) == {"fpu", "sse", "avx512_bf16", "amx_bf16"}
    assert cpu_flags("processor : 0\n") == frozenset()


# -- options -----------------------------------------------------------------------------------

def test_cpu_runtime_options_parse_strictly() -> None:
    options = ServeOptions.from_config({"cpu_runtime": "torchscript", "cpu_precision": "bf16", "cpu_streams": "2"})
    assert (options.cpu_runtime, options.cpu_precision, options.cpu_streams) == ("torchscript", "bf16", 2)
    defaults = ServeOptions()
    assert (defaults.cpu_runtime, defaults.cpu_precision) == ("openvino", "auto")
    for bad in ({"cpu_runtime": "onnx"}, {"cpu_precision": "fp16"}, {"cpu_precision": "f16"},
                {"cpu_streams": 0}, {"cpu_streams": "two"}, {"cpu_streams": 1.5}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            ServeOptions.from_config(bad)


def test_old_cpu_precision_f32_still_loads_as_fp32_with_one_warning(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="handler.serve_settings")
    assert ServeOptions.from_config({"cpu_precision": "f32"}).cpu_precision == "fp32"
    (record,) = caplog.records
    assert "cpu_precision" in record.message and "write fp32" in record.message
    caplog.clear()
    assert ServeOptions.from_config({"cpu_precision": "fp32"}).cpu_precision == "fp32"
    assert not caplog.records


# -- the runtime -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fp32_runtime(tiny_pt: Path, tmp_path_factory: pytest.TempPathFactory) -> OpenVinoRuntime:
    pt = fresh_copy(tiny_pt, tmp_path_factory.mktemp("fp32"))
    return OpenVinoRuntime.load(pt, ServeOptions(cpu_precision="fp32", cpu_streams=2, micro_batch_cpu=3))


@pytest.mark.parametrize("batch", [1, 3])
def test_infer_returns_float32_probabilities_and_embeddings_equal_to_torch(
    fp32_runtime: OpenVinoRuntime, tiny_pt: Path, batch: int
) -> None:
    """Batch 3 over 2 streams runs as 2 + 1 views in two infer requests; rows stay in order."""
    views = random_views(fp32_runtime.contract, batch)
    outputs = fp32_runtime.infer(views)
    probabilities, embeddings = outputs.probabilities, outputs.embedding
    assert probabilities.shape == (batch, CLASSES) and embeddings.shape == (batch, EMBEDDING)
    assert probabilities.dtype == embeddings.dtype == torch.float32
    assert probabilities.device.type == embeddings.device.type == "cpu"
    expected_p, expected_e = torch_reference(tiny_pt, views)
    assert torch.allclose(probabilities.sum(1), torch.ones(batch), atol=1e-5)
    assert torch.allclose(probabilities, expected_p, atol=1e-5)
    assert torch.allclose(embeddings, expected_e, atol=1e-5)
    # Different views give different answers: a row mix-up would show.
    if batch > 1:
        assert float((embeddings[0] - embeddings[1]).abs().max()) > 1e-3


def test_name_and_micro_batch_report_what_runs(fp32_runtime: OpenVinoRuntime) -> None:
    assert fp32_runtime.name == "openvino-fp32"
    assert fp32_runtime.micro_batch == 3
    assert len(fp32_runtime.requests) == 2


@pytest.mark.skipif(not ({"avx512_bf16", "amx_bf16"} & cpu_flags()), reason="this CPU has no native bf16")
def test_auto_precision_on_this_cpu_is_bf16_and_named_so(tiny_pt: Path, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="handler.runtime_openvino")
    runtime = OpenVinoRuntime.load(fresh_copy(tiny_pt, tmp_path), ServeOptions(warmup=False))
    assert runtime.name == "openvino-bf16"
    assert "cpu_precision auto: the CPU computes bf16 natively" in caplog.text


def test_converted_model_is_cached_and_a_damaged_cache_is_rebuilt(tiny_pt: Path, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="handler.runtime_openvino")
    pt = fresh_copy(tiny_pt, tmp_path)
    options = ServeOptions(cpu_precision="fp32", warmup=False)
    first = OpenVinoRuntime.load(pt, options)
    assert "converted from tiny.pt" in caplog.text and "cached in" in caplog.text
    (xml,) = (tmp_path / ".openvino").glob("*/model.xml")
    caplog.clear()
    second = OpenVinoRuntime.load(pt, options)
    assert "IR read from the cache" in caplog.text and "converted from" not in caplog.text
    views = random_views(first.contract, 2)
    assert torch.equal(first.infer(views).probabilities, second.infer(views).probabilities)
    xml.write_text("<truncated")
    caplog.clear()
    third = OpenVinoRuntime.load(pt, options)
    assert "unreadable" in caplog.text and "converted from tiny.pt" in caplog.text
    assert torch.equal(third.infer(views).embedding, first.infer(views).embedding)


# -- the one entry point and its fallback ------------------------------------------------------

def test_cpu_worker_gets_openvino_from_the_one_entry_point(tiny_pt: Path, tmp_path: Path) -> None:
    options = ServeOptions(cpu_precision="fp32", warmup=False)
    runtime = load_runtime(fresh_copy(tiny_pt, tmp_path), torch.device("cpu"), options, workers=2)
    assert isinstance(runtime, OpenVinoRuntime) and runtime.name == "openvino-fp32"
    assert runtime.compiled.get_property("INFERENCE_NUM_THREADS") == max(1, len(os.sched_getaffinity(0)) // 2)
    chosen = load_runtime(tiny_pt, torch.device("cpu"), dataclasses.replace(options, cpu_runtime="torchscript"))
    assert type(chosen) is TorchScriptRuntime and chosen.name == "torchscript-fp32"


def _failing_convert(*args: object, **kwargs: object) -> None:
    raise RuntimeError("simulated conversion failure")


@pytest.mark.parametrize("how", ["convert fails", "openvino missing"])
def test_openvino_failure_falls_back_to_torchscript_with_a_warning(
    how: str, tiny_pt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    import handler.runtime_openvino as runtime_openvino

    if how == "convert fails":
        monkeypatch.setattr(runtime_openvino, "convert", _failing_convert)
    else:
        monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    caplog.set_level(logging.WARNING, logger="handler.runtime")
    options = ServeOptions(warmup=False, optimize=False)
    runtime = load_runtime(fresh_copy(tiny_pt, tmp_path), torch.device("cpu"), options)
    assert type(runtime) is TorchScriptRuntime and runtime.name == "torchscript-fp32"
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert "falling back to TorchScript" in warning.getMessage()
    assert ("simulated conversion failure" if how == "convert fails" else "import of openvino halted") in warning.getMessage()
    outputs = runtime.infer(random_views(runtime.contract, 2))
    probabilities, embeddings = outputs.probabilities, outputs.embedding
    assert probabilities.shape == (2, CLASSES) and embeddings.shape == (2, EMBEDDING)


# -- telemetry ---------------------------------------------------------------------------------

# Runs in a fresh interpreter with HOME in a temporary directory (no consent file: for OpenVINO's
# converter the package then counts the user as opted in). Every way out is recorded: the
# telemetry backends' send, and any socket connect (the GA4 backend sends from a forked process,
# which inherits these patches and appends to the same file).
PROBE = textwrap.dedent("""
    import os, socket, sys
    record = os.environ["PROBE_RECORD"]

    def note(line):
        with open(record, "a") as out:
            out.write(line + "\\n")

    def guarded_connect(self, address):
        note(f"connect {address!r}")
        raise OSError("network disabled by the test")

    socket.socket.connect = guarded_connect
    from openvino_telemetry.backend import backend_ga, backend_ga4
    backend_ga.GABackend.send = lambda self, message: note("send ga")
    backend_ga4.GA4Backend.send = lambda self, message: note("send ga4")

    class Watch:  # is the opt-out in place when openvino is first imported?
        def find_spec(self, name, path=None, target=None):
            if name == "openvino":
                note(f"openvino imported, opt-out loaded: {'handler.telemetry' in sys.modules}")
            return None

    sys.meta_path.insert(0, Watch())
    sys.path.insert(0, os.environ["PROBE_REPO"])
    if sys.argv[1] == "handler":
        import handler.slowfast_handler
    import openvino as ov
    import torch
    ov.convert_model(torch.jit.script(torch.nn.Linear(2, 2)), example_input=torch.zeros(1, 2))
    from openvino_telemetry import Telemetry
    from openvino_telemetry.utils.opt_in_checker import OptInChecker
    Telemetry().force_shutdown(1.0)
    note(f"consent {Telemetry().consent}")
    note(f"check {OptInChecker().check(enable_opt_in_dialog=False, disable_in_ci=True).name}")
""")


@pytest.fixture(scope="module")
def probes(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Tuple[Path, List[str]]]:
    """{mode: (its HOME, the lines it recorded)} for both probes, run side by side (each is seconds
    of imports in a fresh interpreter)."""
    root = tmp_path_factory.mktemp("telemetry")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}
    running = {}
    for mode in ("handler", "bare"):
        home = root / mode
        home.mkdir()
        record = root / f"{mode}.log"
        running[mode] = (home, record, subprocess.Popen(
            [sys.executable, "-c", PROBE, mode], env={**env, "HOME": str(home), "PROBE_RECORD": str(record),
                                                     "PROBE_REPO": str(REPO)},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = {}
    for mode, (home, record, process) in running.items():
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, f"{mode} probe: {err[-2000:]}"
        results[mode] = (home, record.read_text().splitlines())
    return results


@pytest.mark.heavy  # two fresh interpreters importing torch, OpenVINO and TorchServe: ~7 s of CPU
def test_the_worker_sends_no_telemetry(probes) -> None:
    home, lines = probes["handler"]
    assert lines[0] == "openvino imported, opt-out loaded: True"
    assert not [line for line in lines if line.startswith(("send", "connect"))], lines
    assert "consent False" in lines and "check DECLINED" in lines
    assert not (home / "intel").exists()  # nothing written to the user's home either


@pytest.mark.heavy
def test_without_the_opt_out_openvino_would_send(probes) -> None:
    """The probe can fail: the same conversion without the handler's opt-out tries to send."""
    _, lines = probes["bare"]
    assert "consent True" in lines and "check NO_FILE" in lines
    assert [line for line in lines if line.startswith("send")], lines
