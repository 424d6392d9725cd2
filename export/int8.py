"""Int8 at export: NNCF post-training quantization of the OpenVINO model CPU workers serve, measured.

The fp32 OpenVINO model is the one workers convert from the .pt (``handler.runtime_openvino.convert``).
NNCF quantizes it on calibration windows (``export.calibration``: the handler's own preprocessing
of real videos); the int8 and fp32 models then run the held-out windows (other videos) and their
agreement is measured: top-1 agreement, top-5 overlap, max |delta probability|, logit correlation.
Quantizing everything is fastest; where agreement misses the target, layers are kept in fp32 one
rung of ``KEEP_FP32_LADDER`` at a time (the head, then the stems as well: the layers where int8's
error reaches the answer most directly) until it is reached; the first rung that reaches it is
kept, else the best one. Below the floor the export refuses, naming the numbers.

The int8 IR is saved inside the .pt as two extra files beside the contract (``INT8_XML``,
``INT8_BIN``), its figures in the contract (``Int8Figures``): workers read it, never convert or
calibrate.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from export.calibration import CalibrationSet, CalibrationWindow
from handler.contract import Int8Figures, PreprocessContract, activate

log = logging.getLogger(__name__)

# Top-1 agreement with fp32 on held-out windows that ends the search for layers to keep in fp32.
TARGET_TOP1_AGREEMENT = 0.97
# Below this the export refuses (INT8_MIN_AGREEMENT / --int8-min-agreement overrides).
DEFAULT_MIN_AGREEMENT = 0.90
# (what is kept in fp32, how to pick those layers from the fp32 model's ordered ops)
KEEP_FP32_LADDER: Tuple[str, ...] = ("nothing", "head", "head+stems")


class Int8Error(RuntimeError):
    """The int8 model's agreement is below the floor (or it could not be made)."""


def _layers_kept(model: Any, rung: str) -> List[str]:
    """Friendly names of the ops ``rung`` keeps in fp32: the classifier's MatMul ("head"), and
    also the first convolution of each pathway ("stems", the convolutions reading the input)."""
    ops = model.get_ordered_ops()
    names: List[str] = []
    if rung in ("head", "head+stems"):
        names += [op.get_friendly_name() for op in ops if op.get_type_name() == "MatMul"]
    if rung == "head+stems":
        inputs = {p.get_friendly_name() for p in model.get_parameters()}
        for op in ops:
            if op.get_type_name() == "Convolution":
                source = op.input_value(0).get_node()
                # Through the pathway's own ops (slicing, conversions) back to a model input.
                while source.get_type_name() not in ("Parameter", "Convolution") and source.get_input_size():
                    source = source.input_value(0).get_node()
                if source.get_type_name() == "Parameter" and source.get_friendly_name() in inputs:
                    names.append(op.get_friendly_name())
    return names


def _forward(compiled: Any, windows: Sequence[CalibrationWindow]) -> torch.Tensor:
    """Logits (N, classes) float32 of ``windows``, one view at a time (as workers run them)."""
    request = compiled.create_infer_request()
    rows = []
    for window in windows:
        request.infer({0: window.pathways[0].numpy(), 1: window.pathways[1].numpy()})
        rows.append(torch.from_numpy(request.get_output_tensor(0).data.copy()))
    return torch.cat(rows).float()


def agreement(reference: torch.Tensor, candidate: torch.Tensor, activation: str) -> Dict[str, float]:
    """How well ``candidate`` logits (N, classes) reproduce ``reference`` logits (N, classes).

    ``top1_agreement``: fraction of rows with the same argmax; ``top5_overlap``: mean fraction of
    the reference's top 5 classes among the candidate's (a head of 5 classes or fewer: all of them,
    so 1.0 by construction); ``max_abs_probability_delta``: the
    largest |p - p_ref| after the contract's activation (softmax or sigmoid); ``logit_correlation``:
    the lowest per-row Pearson correlation of the logits."""
    k = min(5, reference.shape[1])
    top_ref, top_new = reference.topk(k, dim=1).indices, candidate.topk(k, dim=1).indices
    overlap = [len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(top_ref, top_new)]
    centred = [(r - r.mean(), c - c.mean()) for r, c in zip(reference.double(), candidate.double())]
    correlation = [float((r * c).sum() / (r.norm() * c.norm()).clamp_min(1e-30)) for r, c in centred]
    delta = (activate(reference, activation) - activate(candidate, activation)).abs().max()
    return {
        "top1_agreement": float((reference.argmax(1) == candidate.argmax(1)).double().mean()),
        "top5_overlap": float(np.mean(overlap)),
        "max_abs_probability_delta": float(delta),
        "logit_correlation": min(correlation),
    }


def quantize_model(
    fp32_model: Any, contract: PreprocessContract, windows: CalibrationSet,
    target: float = TARGET_TOP1_AGREEMENT, ladder: Sequence[str] = KEEP_FP32_LADDER,
) -> Tuple[Any, Int8Figures]:
    """(int8 ``openvino.Model``, its figures on the held-out windows): the first rung of ``ladder``
    whose top-1 agreement reaches ``target``, else the rung that agreed best."""
    import nncf
    import openvino as ov

    core = ov.Core()
    fp32 = core.compile_model(fp32_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    reference = _forward(fp32, windows.held_out)
    dataset = nncf.Dataset(windows.calibration, lambda w: (w.pathways[0].numpy(), w.pathways[1].numpy()))
    best: Optional[Tuple[Any, Int8Figures]] = None
    for rung in ladder:
        started = time.monotonic()
        kept = _layers_kept(fp32_model, rung)
        quantized = nncf.quantize(
            fp32_model, dataset, preset=nncf.QuantizationPreset.MIXED, subset_size=len(windows.calibration),
            fast_bias_correction=True, ignored_scope=nncf.IgnoredScope(names=kept) if kept else None,
        )
        compiled = core.compile_model(quantized, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        figures = Int8Figures(
            **agreement(reference, _forward(compiled, windows.held_out), contract.activation),
            kept_fp32=rung, target_top1=target,
            calibration_windows=len(windows.calibration), held_out_windows=len(windows.held_out),
            calibration_videos=windows.videos[0], held_out_videos=windows.videos[1],
            calibration_folder=windows.folder.name, nncf=nncf.__version__, openvino=ov.get_version(),
        )
        log.info("int8 keeping %s in fp32 (%d layers): %s (%.0f s)", rung, len(kept), figures.summary(),
                 time.monotonic() - started)
        if best is None or figures.top1_agreement > best[1].top1_agreement:
            best = (quantized, figures)
        if figures.top1_agreement >= target:
            break
    assert best is not None
    return best


def check_floor(figures: Int8Figures, floor: float) -> None:
    """Int8Error naming the numbers when top-1 agreement is below ``floor``."""
    if figures.top1_agreement < floor:
        raise Int8Error(
            f"int8 refused: on {figures.held_out_windows} held-out windows it agrees with fp32 on top-1 for "
            f"{figures.top1_agreement:.3f} of them, below the floor {floor:g} ({figures.summary()}). "
            f"Calibrate on videos like the ones you serve (CALIBRATION=folder), or accept it with "
            f"INT8_MIN_AGREEMENT={figures.top1_agreement:.2f}, or serve fp32/bf16 (PRECISION=fp32)."
        )


def ir_files(model: Any) -> Tuple[bytes, bytes]:
    """(IR .xml, IR .bin) bytes of an ``openvino.Model``, weights as they are (int8 stays int8)."""
    import openvino as ov

    with tempfile.TemporaryDirectory(prefix="int8-") as scratch:
        xml = Path(scratch) / "model.xml"
        ov.save_model(model, str(xml), compress_to_fp16=False)
        return xml.read_bytes(), xml.with_suffix(".bin").read_bytes()


def with_figures(contract: PreprocessContract, figures: Int8Figures) -> PreprocessContract:
    return dataclasses.replace(contract, int8=figures)


def int8_for_export(
    module: torch.jit.ScriptModule, contract: PreprocessContract, folder: Optional[Path],
    floor: float = DEFAULT_MIN_AGREEMENT, target: float = TARGET_TOP1_AGREEMENT,
    ladder: Sequence[str] = KEEP_FP32_LADDER,
) -> Tuple[PreprocessContract, Dict[str, bytes]]:
    """(the contract with its ``int8`` figures, the IR files to store beside it) for the scripted
    ``module`` (any classifier variant, any head: the windows follow ``contract``'s frames and
    sizes, the figures its activation): calibrated on the videos in ``folder`` (None:
    export.calibration's default), measured on held-out ones; ``ladder``: the rungs tried (the
    bench's random weights try only the first). CalibrationError without videos; Int8Error below
    ``floor``."""
    from export.calibration import calibration_set, choose_folder
    from handler.contract import INT8_BIN, INT8_XML
    from handler.runtime_openvino import convert

    started = time.monotonic()
    windows = calibration_set(choose_folder(folder), contract)
    log.info("int8: %d calibration windows from %d videos, %d held-out windows from %d videos in %s",
             len(windows.calibration), windows.videos[0], len(windows.held_out), windows.videos[1], windows.folder)
    model, figures = quantize_model(convert(module, contract), contract, windows, target=target, ladder=ladder)
    print(f"int8 against fp32 ({figures.kept_fp32} kept in fp32): {figures.summary()}", flush=True)
    check_floor(figures, floor)
    xml, weights = ir_files(model)
    log.info("int8 model made and measured in %.0f s (IR %.1f MB)", time.monotonic() - started, len(weights) / 1e6)
    return with_figures(contract, figures), {INT8_XML: xml, INT8_BIN: weights}
