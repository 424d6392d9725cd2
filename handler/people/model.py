"""The action detector on the worker: the exported TorchScript file and its contract, run by OpenVINO
or TorchScript on CPU, or TorchScript on the GPU of a GPU worker.

A GPU worker (``device`` ``cuda:{gpu_id}``, the handler's ``choose_device``) runs it as it runs the
classifier: TorchScript on that GPU, frozen, under the ``precision`` setting's autocast
(``runtime_torchscript``'s, shared; named ``torchscript-cuda-{precision}``). One forward at load
checks that it runs there (torchvision's CUDA kernels included); if loading or that forward fails,
the worker logs why and runs the detector on the CPU by the rules below.

The runtime is chosen by the classifier's rules (``handler.runtime``): ``cpu_runtime: openvino``
(the default) converts the scripted network at load (its RoIAlign is OpenVINO's ROIAlign),
compiles it at ``cpu_precision`` (``choose_precision``: auto serves bf16 only where the CPU computes
it natively) and caches the IR beside the .pt; if anything there fails the worker serves the same
.pt on TorchScript and logs why. ``cpu_runtime: torchscript`` serves TorchScript. ``name`` says
which runs (``openvino-fp32``, ``openvino-bf16``, ``torchscript-fp32``); answers carry it.

``infer([slow, fast], boxes)`` -> (logits (N, classes), probabilities (N, classes)), float32 on
CPU whatever the device; the contract's activation (sigmoid) applied in float32, as for the classifier.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, FrozenSet, List, Optional, Tuple

import torch
import torchvision  # noqa: F401  (registers torchvision::roi_align, which the scripted RoI head calls)

from handler.contract import DETECTION, ContractError, PreprocessContract, activate
from handler.runtime_base import CPU, EMBEDDING_METHOD, cpu_thread_count, read_model, to_device
from handler.runtime_torchscript import autocast, autocast_dtype_for, torchscript_name
from handler.runtime_openvino import CACHE_DIR_NAME, cached_model, choose_precision, compile_for_cpu, cpu_flags
from handler.serve_settings import ServeOptions

log = logging.getLogger(__name__)

# Part of the detector's IR cache key: bump when ``convert_detector`` changes what it produces.
DETECTOR_CONVERSION_VERSION = 1

# (pathways [slow, fast], boxes (N, 5)) -> logits (N, classes)
Forward = Callable[[List[torch.Tensor], torch.Tensor], torch.Tensor]


class _ThreeInputs(torch.nn.Module):
    """``forward(slow, fast, boxes) -> (logits, feature)``: OpenVINO's frontend cannot take the
    scripted module's list input."""

    def __init__(self, scripted: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.scripted = scripted

    def forward(self, slow: torch.Tensor, fast: torch.Tensor, boxes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.scripted.forward_with_embedding([slow, fast], boxes)


def example_inputs(contract: PreprocessContract, boxes: int = 1) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """Zero ``[slow (1,3,T/a,s,s), fast (1,3,T,s,s)]`` float32 (s: the contract's short side) and
    ``boxes`` whole-frame (N, 5) boxes, for conversion and warm-up."""
    side = contract.short_side
    fast = torch.zeros(1, 3, contract.num_frames, side, side)
    rois = torch.tensor([[0.0, 0.0, 0.0, side - 1.0, side - 1.0]]).repeat(boxes, 1)
    return [fast[:, :, :: contract.alpha].contiguous(), fast], rois


def convert_detector(module: torch.jit.ScriptModule, contract: PreprocessContract) -> Any:
    """The scripted detector as an ``openvino.Model``: inputs slow (B,3,T/a,H,W), fast (B,3,T,H,W)
    float32 and boxes (N,5) float32, outputs logits (N,classes) and feature (N,D).

    B, H, W and N are dynamic: the working frame's long side follows the video's aspect ratio (no
    crop), and a keyframe has any number of persons. The frame counts are fixed by the contract."""
    import openvino as ov

    wrapper = torch.jit.script(_ThreeInputs(module).eval())
    (slow, fast), boxes = example_inputs(contract, boxes=2)
    model = ov.convert_model(wrapper, example_input=(slow, fast, boxes))
    model.reshape({
        model.inputs[0]: ov.PartialShape([-1, 3, slow.shape[2], -1, -1]),
        model.inputs[1]: ov.PartialShape([-1, 3, fast.shape[2], -1, -1]),
        model.inputs[2]: ov.PartialShape([-1, 5]),
    })
    return model


@dataclass
class ActionDetector:
    """A loaded action detector: ``forward`` gives the logits; ``name`` the runtime that runs it;
    ``device`` where ``forward`` takes its inputs (``infer`` moves them there)."""

    forward: Forward
    contract: PreprocessContract
    name: str = "torchscript-fp32"
    device: torch.device = CPU

    @classmethod
    def load(cls, path: Path, options: ServeOptions, workers: Optional[int] = None,
             flags: Optional[FrozenSet[str]] = None, cache_root: Optional[Path] = None,
             device: torch.device = CPU) -> "ActionDetector":
        """The detector at ``path`` on ``device``'s GPU (TorchScript), or on the CPU on OpenVINO
        (``cpu_runtime: openvino``) or TorchScript, warmed up (``options.warmup``; on a GPU always:
        that forward is the check that it runs there).

        ``device``: the worker's (``handler.runtime.choose_device``); a GPU that cannot run the
        detector leaves it on the CPU, said in the log. ``workers``: workers sharing the host's cores
        (None: as many threads as torch's pool, which the handler sized for its workers); ``flags``:
        the CPU's flags (default /proc/cpuinfo); ``cache_root``: where the converted IR is kept
        (default ``.openvino`` beside the .pt).
        """
        if device.type == "cuda":
            try:
                return cls._cuda(path, options, device)
            except ContractError:
                raise  # the .pt itself is wrong: the CPU would refuse it too
            except Exception as exc:  # never a dead worker: the CPU serves the same .pt
                log.warning("the action detector cannot run on %s (%s: %s); it runs on the CPU",
                            device, type(exc).__name__, exc, exc_info=True)
        detector: Optional[ActionDetector] = None
        if options.cpu_runtime == "openvino":
            try:
                detector = cls._openvino(path, options, workers, flags, cache_root or path.parent / CACHE_DIR_NAME)
            except ContractError:
                raise  # the .pt itself is wrong: TorchScript would refuse it too
            except Exception as exc:  # never a dead worker: TorchScript serves the same .pt
                log.warning("cpu_runtime openvino failed for the action detector (%s: %s); falling back to "
                            "TorchScript fp32", type(exc).__name__, exc, exc_info=True)
        if detector is None:
            detector = cls._torchscript(path, options)
        if options.warmup:
            started = time.monotonic()
            detector.infer(*example_inputs(detector.contract))
            log.info("warm-up forward (%s) took %.2f s", detector.name, time.monotonic() - started)
        return detector

    @classmethod
    def _cuda(cls, path: Path, options: ServeOptions, device: torch.device) -> "ActionDetector":
        """TorchScript on ``device`` (``_torchscript``), with one forward that checks it runs there."""
        detector = cls._torchscript(path, options, device)
        started = time.monotonic()
        detector.infer(*example_inputs(detector.contract))  # raises here, at load, where this GPU cannot run it
        log.info("action detector runtime %s on %s; first forward (warm-up, check) %.2f s",
                 detector.name, device, time.monotonic() - started)
        return detector

    @classmethod
    def _torchscript(cls, path: Path, options: ServeOptions, device: torch.device = CPU) -> "ActionDetector":
        """TorchScript on ``device``, frozen (``optimize``); on a GPU under the classifier's autocast
        (``precision``), on the CPU in float32.

        The RoI head takes fp16/bf16 autocast as the backbone does: torchvision registers autocast
        kernels for ``roi_align`` that run it in float32 (features and boxes) and give back the
        features' dtype, so float32 boxes meet fp16 features without a dtype error; its linear
        projection runs in the autocast dtype, the sigmoid in float32 (``infer``). Unlike the
        classifier, neither cuDNN's autotuner nor channels-last: the working frame's size follows
        each video's aspect ratio and the box count each keyframe's persons, so the autotuner would
        tune again for every new shape (whether either would pay here is not measured)."""
        module, contract = read_model(path, device)
        _check_task(path, contract)
        if options.optimize:
            module = torch.jit.freeze(module, preserved_attrs=[EMBEDDING_METHOD])
        dtype = autocast_dtype_for(device, options.precision) if device.type == "cuda" else None

        def forward(pathways: List[torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
            with autocast(device, dtype):
                return module.forward_with_embedding(pathways, boxes)[0]

        if device.type != "cuda":
            log.info("action detector runtime torchscript-fp32 (cpu_runtime %s)", options.cpu_runtime)
        return cls(forward, contract, torchscript_name(device, options.precision), device)

    @classmethod
    def _openvino(cls, path: Path, options: ServeOptions, workers: Optional[int],
                  flags: Optional[FrozenSet[str]], cache_root: Path) -> "ActionDetector":
        # No int8 model for the detector: cpu_precision int8 raises here, before converting (then
        # TorchScript, said why).
        precision, why = choose_precision(options.cpu_precision, cpu_flags() if flags is None else flags)
        model, contract, how = cached_model(path, cache_root, convert_detector, DETECTOR_CONVERSION_VERSION)
        _check_task(path, contract)
        threads = torch.get_num_threads() if workers is None else cpu_thread_count(options, workers)
        started = time.monotonic()
        # One stream: a request's keyframes run one after another, each a single forward.
        compiled, name = compile_for_cpu(model, precision, threads, streams=1)
        request = compiled.create_infer_request()

        def forward(pathways: List[torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
            slow, fast = (p.detach().to(torch.float32).contiguous().numpy() for p in pathways)
            request.infer({0: slow, 1: fast, 2: boxes.detach().to(torch.float32).contiguous().numpy()},
                          share_inputs=True)
            return torch.from_numpy(request.get_output_tensor(0).data.copy())

        log.info("action detector runtime %s: %s; %d threads; %s; compiled in %.1f s",
                 name, why, threads, how, time.monotonic() - started)
        return cls(forward, contract, name)

    def infer(self, pathways: List[torch.Tensor], boxes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``[slow (B,3,T/a,H,W), fast (B,3,T,H,W)]`` float32 and (N, 5) boxes ``(view index, x1, y1, x2, y2)``,
        on any device (moved to ``device``; on the CPU nothing is copied) -> (logits (N, classes),
        probabilities (N, classes)) float32 on the CPU."""
        pathways = [to_device(p, self.device) for p in pathways]
        with torch.inference_mode():
            logits = self.forward(pathways, to_device(boxes, self.device)).float().cpu()
        return logits, activate(logits, self.contract.activation)


def _check_task(path: Path, contract: PreprocessContract) -> None:
    if contract.task != DETECTION:
        raise ContractError(f"{path.name} is a {contract.task} model, not an action detector")
