"""OpenVINO runtime for CPU workers, converted at load from the same scripted .pt (issue 10), or
the int8 model the .pt carries (``make mar PRECISION=int8``, export/int8.py), read as it is.

``OpenVinoRuntime`` is a ``runtime_base.Runtime``; ``runtime.load_runtime`` returns it for CPU
workers with ``cpu_runtime: openvino`` and falls back to TorchScript if anything here fails. The
converted model (OpenVINO IR) is cached beside the .pt, keyed by the .pt's sha256 and the OpenVINO
version, so a restarted or added worker skips the conversion.
"""

from __future__ import annotations

import handler.telemetry  # noqa: F401  (opts out before openvino is imported)

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, FrozenSet, List, Optional, Tuple

import numpy as np
import torch

from handler.contract import CONTRACT_FILE, INT8_BIN, INT8_XML, PreprocessContract, stored_files
from handler.file_hash import file_sha256
from handler.serve_settings import ServeOptions
from handler.runtime_base import Outputs, cpu_thread_count, dummy_pathways, model_outputs, read_model

log = logging.getLogger(__name__)

# CPU flags (/proc/cpuinfo) meaning the cores compute bf16 natively; elsewhere OpenVINO's bf16 is
# emulated (slower than fp32) or ignored.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# Our precision words (handler/serve_settings.py) and OpenVINO's element type names, which differ for fp32
# and fp16: mapped only at the calls into OpenVINO, so settings and runtime names use one word.
_OPENVINO_TYPES = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}
_OUR_PRECISIONS = {openvino: ours for ours, openvino in _OPENVINO_TYPES.items()}
CACHE_DIR_NAME = ".openvino"
# What answers name as the runtime when the int8 model the file carries is served.
INT8_RUNTIME = "openvino-int8"
# Part of the cache key: bump when the conversion below changes what it produces.
CONVERSION_VERSION = 1


def cpu_flags(cpuinfo: Optional[str] = None) -> FrozenSet[str]:
    """Flags of the first processor in ``cpuinfo`` (default: /proc/cpuinfo); empty if unreadable."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def choose_precision(setting: str, flags: FrozenSet[str], int8: bool = False) -> Tuple[str, str]:
    """(``int8``, ``bf16`` or ``fp32``, why) for ``cpu_precision`` ``setting`` (auto, fp32, bf16,
    int8) on a CPU with ``flags``; ``int8``: the model file carries an int8 model."""
    native = sorted(flag for flag in BF16_FLAGS if flag in flags)
    if setting in ("auto", "int8") and int8:
        return "int8", f"cpu_precision {setting}: the model file carries an int8 model (make mar PRECISION=int8)"
    if setting == "int8":
        raise ValueError("cpu_precision int8, but the model file carries no int8 model: `make mar PRECISION=int8`")
    if setting == "auto":
        if native:
            return "bf16", f"cpu_precision auto: the CPU computes bf16 natively ({', '.join(native)})"
        return "fp32", f"cpu_precision auto: the CPU has none of {', '.join(BF16_FLAGS)}, bf16 would not be faster"
    if setting == "bf16" and not native:
        return "bf16", f"cpu_precision bf16 as configured, though the CPU has none of {', '.join(BF16_FLAGS)}"
    return setting, f"cpu_precision {setting} as configured"


class _TwoInputs(torch.nn.Module):
    """``forward(slow, fast) -> (logits, embedding)``: OpenVINO's frontend cannot take the scripted
    module's list input, and both outputs must come from one compiled model."""

    def __init__(self, scripted: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.scripted = scripted

    def forward(self, slow: torch.Tensor, fast: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.scripted.forward_with_embedding([slow, fast])


def convert(module: torch.jit.ScriptModule, contract: PreprocessContract) -> Any:
    """The scripted module as an ``openvino.Model``: inputs slow (B,3,T/a,c,c), fast (B,3,T,c,c)
    float32 with a dynamic batch, outputs logits (B,classes) and embedding (B,D)."""
    import openvino as ov

    # Scripting the wrapper converts in ~4 s; tracing it (a plain nn.Module) took ~45 s here.
    wrapper = torch.jit.script(_TwoInputs(module).eval())
    slow, fast = dummy_pathways(contract)
    model = ov.convert_model(wrapper, example_input=(slow, fast))
    # Every dimension but the batch is fixed by the contract: static shapes compile to faster kernels.
    model.reshape({
        model.inputs[0]: ov.PartialShape([-1, *slow.shape[1:]]),
        model.inputs[1]: ov.PartialShape([-1, *fast.shape[1:]]),
    })
    return model


Converter = Callable[[torch.jit.ScriptModule, PreprocessContract], Any]


def cached_model(path: Path, cache_root: Path, converter: Optional[Converter] = None,
                 version: int = CONVERSION_VERSION) -> Tuple[Any, PreprocessContract, str]:
    """(``openvino.Model``, contract, how it was obtained): the IR cached under ``cache_root`` for
    this .pt and OpenVINO version, or a fresh conversion (then cached, if ``cache_root`` is writable).

    ``converter``: the scripted module and its contract -> ``openvino.Model`` (None: the classifier's
    ``convert``, looked up at the call; the action detector has its own, handler/people/model.py);
    ``version``: the converter's, part of the cache key."""
    import openvino as ov

    started = time.monotonic()
    module, contract = read_model(path, torch.device("cpu"))
    key = hashlib.sha256(f"{file_sha256(path)} {ov.get_version()} {version}".encode()).hexdigest()[:20]
    entry = cache_root / key
    xml = entry / "model.xml"
    if xml.is_file():
        try:
            model = ov.Core().read_model(str(xml))
            return model, contract, f"IR read from the cache {entry} in {time.monotonic() - started:.1f} s"
        except Exception as exc:  # a damaged entry is converted again and replaced
            log.warning("OpenVINO IR cache %s unreadable (%s); converting again", entry, exc)
    model = (converter or convert)(module, contract)
    how = f"converted from {path.name} in {time.monotonic() - started:.1f} s"
    partial: Optional[Path] = None
    try:
        cache_root.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache_root))
        # fp32 weights: compressing them to fp16 would change fp32 answers.
        ov.save_model(model, str(partial / "model.xml"), compress_to_fp16=False)
        (partial / "source.json").write_text(json.dumps({
            "pt": path.name, "openvino": ov.get_version(), "conversion": version,
        }))
        shutil.rmtree(entry, ignore_errors=True)
        os.replace(partial, entry)  # atomic: a worker starting beside this one reads all or nothing
        how += f", cached in {entry}"
    except OSError as exc:  # read-only model dir or a concurrent worker's entry: run uncached
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True)
        how += f" (not cached: {exc})"
    return model, contract, how


def int8_model(path: Path) -> Optional[Tuple[Any, PreprocessContract]]:
    """(int8 ``openvino.Model``, contract) from the IR stored in ``path`` at export; None when
    the file carries none. Nothing is converted or calibrated here, and the TorchScript module
    is not loaded: a file without an int8 model costs a look at its zip directory."""
    import openvino as ov

    files = stored_files(path, (CONTRACT_FILE, INT8_XML, INT8_BIN))
    if files is None:
        return None
    contract = PreprocessContract.from_json(files[0])
    if contract.int8 is None:
        return None
    return ov.Core().read_model(files[1].decode(), ov.Tensor(np.frombuffer(files[2], dtype=np.uint8))), contract


def compile_for_cpu(model: Any, precision: str, threads: int, streams: int) -> Tuple[Any, str]:
    """(compiled model, runtime name such as ``openvino-fp32``) of ``model`` on OpenVINO's CPU plugin.

    ``precision``: ``choose_precision``'s word; ``streams``: infer requests run side by side."""
    import openvino as ov

    compiled = ov.Core().compile_model(model, "CPU", {
        # int8: the layers left in fp32 run in fp32, as they did when agreement was measured.
        "INFERENCE_PRECISION_HINT": "f32" if precision == "int8" else _OPENVINO_TYPES[precision],
        "INFERENCE_NUM_THREADS": threads,
        # One stream runs one view on all threads; more streams run views side by side.
        "PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT",
        "NUM_STREAMS": streams,
    })
    if precision == "int8":
        return compiled, INT8_RUNTIME
    # The name reports what the plugin compiled, not what was asked.
    compiled_type = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    return compiled, f"openvino-{_OUR_PRECISIONS.get(compiled_type, compiled_type)}"


@dataclass
class OpenVinoRuntime:
    """``infer`` maps ``[slow, fast]`` float32 views to ``Outputs`` through OpenVINO's
    CPU plugin; a micro-batch's views are spread over ``len(requests)`` parallel infer requests."""

    compiled: Any
    requests: List[Any]
    contract: PreprocessContract
    micro_batch: int
    name: str

    @classmethod
    def load(
        cls, path: Path, options: ServeOptions, workers: int = 1, flags: Optional[FrozenSet[str]] = None,
        cache_root: Optional[Path] = None,
    ) -> "OpenVinoRuntime":
        """Convert (or read the cached IR of) ``path``, compile it for this CPU, warm it up.

        ``flags``: the CPU's flags (default /proc/cpuinfo); ``cache_root``: where converted models
        are kept (default ``.openvino`` beside the .pt). Raises on any failure: the caller falls back.
        """
        import openvino  # noqa: F401  (fails here, before any work, where OpenVINO is missing: the caller falls back)

        started = time.monotonic()
        int8 = int8_model(path) if options.cpu_precision in ("auto", "int8") else None
        precision, why = choose_precision(options.cpu_precision, cpu_flags() if flags is None else flags, int8 is not None)
        threads = cpu_thread_count(options, workers)
        if int8 is not None:
            model, contract = int8
            how = f"int8 IR read from {path.name} in {time.monotonic() - started:.1f} s; {contract.int8.summary()}"
        else:
            model, contract, how = cached_model(path, cache_root or path.parent / CACHE_DIR_NAME)
        started = time.monotonic()
        compiled, name = compile_for_cpu(model, precision, threads, options.cpu_streams)
        runtime = cls(
            compiled=compiled,
            requests=[compiled.create_infer_request() for _ in range(options.cpu_streams)],
            contract=contract,
            micro_batch=options.micro_batch_cpu,
            name=name,
        )
        log.info(
            "CPU runtime %s: %s; %d threads, %d stream(s); %s; compiled in %.1f s",
            runtime.name, why, threads, options.cpu_streams, how, time.monotonic() - started,
        )
        if options.warmup:
            started = time.monotonic()
            runtime.infer(dummy_pathways(contract))
            log.info("warm-up forward (%s) took %.2f s", runtime.name, time.monotonic() - started)
        return runtime

    def infer(self, pathways: List[torch.Tensor]) -> Outputs:
        """``[slow (B,3,T/a,H,W), fast (B,3,T,H,W)]`` float32 on CPU -> ``Outputs`` (float32 on CPU)."""
        slow, fast = (p.detach().to(torch.float32).contiguous().numpy() for p in pathways)
        parts = np.array_split(np.arange(slow.shape[0]), min(len(self.requests), slow.shape[0]))
        requests = self.requests[: len(parts)]
        for request, rows in zip(requests, parts):
            request.start_async({0: slow[rows[0]: rows[-1] + 1], 1: fast[rows[0]: rows[-1] + 1]}, share_inputs=True)
        logits, embeddings = [], []
        for request in requests:
            request.wait()
            logits.append(torch.from_numpy(request.get_output_tensor(0).data.copy()))
            embeddings.append(torch.from_numpy(request.get_output_tensor(1).data.copy()))
        return model_outputs(torch.cat(logits), torch.cat(embeddings), self.contract.activation)
