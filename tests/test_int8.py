"""Int8 (issue 26): NNCF quantization at export, its agreement with fp32 stored in the contract,
the int8 model served as ``openvino-int8`` without converting or calibrating.

The heavy tests quantize the perturbed checkpoint (tests/checkpoints.py: a trained network's
numerics) on two short real videos, one calibrated on and one held out (one window each): that
keeps them to about a minute here, and tests the mechanism, not the figures a real calibration
set gives (bench/RESULTS.md has those, from ``make mar PRECISION=int8``).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Tuple

import pytest
import torch

from export.calibration import CalibrationError, calibration_set, choose_folder
from export.int8 import Int8Error, agreement, check_floor, int8_for_export
from handler.contract import INT8_XML, Int8Figures, PreprocessContract
from handler.serve_settings import ServeOptions
from harness.paths import MODEL

# One real window each (1.2 s and 1 s videos): one calibrated on, one held out.
SHORT_VIDEOS = ("ii__realshort.mp4", "mp__big_buck_bunny_432_433.webm")

FIGURES = Int8Figures(
    top1_agreement=0.8, top5_overlap=0.9, max_abs_probability_delta=0.05, logit_correlation=0.999,
    kept_fp32="head", target_top1=0.97, calibration_windows=10, held_out_windows=20, calibration_videos=5,
    held_out_videos=5, calibration_folder="videos", nncf="3.4.0", openvino="2026.4.1",
)


# -- quick: the figures, the floor, the folder ------------------------------------------------------


def test_agreement_of_identical_logits_is_perfect_and_a_swapped_top1_counts() -> None:
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0, -2.0], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
    same = agreement(logits, logits.clone(), "softmax")
    assert same == {"top1_agreement": 1.0, "top5_overlap": 1.0, "max_abs_probability_delta": 0.0,
                    "logit_correlation": pytest.approx(1.0)}
    swapped = logits.clone()
    swapped[0, [0, 1]] = swapped[0, [1, 0]]  # row 0's top two change places: top-5 set unchanged
    swapped[1, 0] = 10.0  # row 1's last class becomes its first: top-5 loses class 1
    figures = agreement(logits, swapped, "softmax")
    assert figures["top1_agreement"] == 0.0
    assert figures["top5_overlap"] == pytest.approx((1.0 + 0.8) / 2)
    p_ref, p_new = torch.softmax(logits, 1), torch.softmax(swapped, 1)
    assert figures["max_abs_probability_delta"] == pytest.approx(float((p_ref - p_new).abs().max()))
    # sigmoid heads: per-class probabilities, the same top-1 rule
    sigmoid = agreement(logits, swapped, "sigmoid")
    assert sigmoid["max_abs_probability_delta"] == pytest.approx(float((torch.sigmoid(logits) - torch.sigmoid(swapped)).abs().max()))


def test_the_floor_refuses_naming_the_numbers() -> None:
    check_floor(FIGURES, 0.8)  # at the floor: accepted
    with pytest.raises(Int8Error, match=r"0\.800 of them, below the floor 0\.9 .*20 held-out windows.*INT8_MIN_AGREEMENT=0\.80"):
        check_floor(FIGURES, 0.9)


def test_a_missing_calibration_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match=r"calibration folder .*nowhere does not exist"):
        choose_folder(tmp_path / "nowhere")
    with pytest.raises(CalibrationError, match=r"int8 needs real videos.*absent does not exist.*CALIBRATION="):
        choose_folder(None, default=tmp_path / "absent")
    assert choose_folder(None, default=tmp_path) == tmp_path


def test_a_folder_without_videos_is_a_clear_error(tmp_path: Path) -> None:
    from export.reference import default_contract

    (tmp_path / "notes.txt").write_text("no video here")
    with pytest.raises(CalibrationError, match=r"has 0 usable video\(s\) among 1 file\(s\)"):
        calibration_set(tmp_path, default_contract())


def test_the_figures_travel_in_the_contract() -> None:
    from export.reference import default_contract

    contract = dataclasses.replace(default_contract(), int8=FIGURES)
    assert PreprocessContract.from_json(contract.to_json()) == contract
    assert PreprocessContract.from_json(default_contract().to_json()).int8 is None


def test_agreement_of_a_head_with_fewer_than_five_classes() -> None:
    """A fine-tuned 3-class head: top-5 is all of it (overlap 1 by construction), the rest as usual."""
    reference = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    candidate = torch.tensor([[0.4, 0.5, -1.0], [0.0, 1.0, 3.0]])  # row 0's top-1 moves to class 1
    for activation in ("softmax", "sigmoid"):
        figures = agreement(reference, candidate, activation)
        assert figures["top1_agreement"] == 0.5 and figures["top5_overlap"] == 1.0
        p_ref = torch.sigmoid(reference) if activation == "sigmoid" else torch.softmax(reference, 1)
        p_new = torch.sigmoid(candidate) if activation == "sigmoid" else torch.softmax(candidate, 1)
        assert figures["max_abs_probability_delta"] == pytest.approx(float((p_ref - p_new).abs().max()))
        assert figures["logit_correlation"] == pytest.approx(float(torch.corrcoef(torch.stack([reference[0], candidate[0]]))[0, 1]))


@pytest.mark.parametrize("variant", ["slowfast_r50", "slowfast_16x8_r101_50_50"])
def test_calibration_windows_follow_the_contract_of_each_variant(shared_videos: Path, tmp_path: Path, variant: str) -> None:
    """The windows the quantizer sees are the variant's own input: its frames, its crop (a 64-frame
    variant gets 64 fast and 16 slow frames), and a contract's other crop size is followed too."""
    from export.variants import VARIANTS, contract_for, read_label_file

    chosen = VARIANTS[variant]
    for name in SHORT_VIDEOS:
        shutil.copy(shared_videos / name, tmp_path / name)
    contract = contract_for(chosen, read_label_file(chosen.labels_file))
    for crop in (contract.crop_size, 224):
        windows = calibration_set(tmp_path, dataclasses.replace(contract, crop_size=crop))
        assert windows.videos == (1, 1)
        for window in windows.calibration + windows.held_out:
            slow, fast = window.pathways
            assert fast.shape == (1, 3, chosen.num_frames, crop, crop) and fast.dtype == torch.float32
            assert slow.shape == (1, 3, chosen.num_frames // chosen.alpha, crop, crop)


def layers_kept_in(variant: str) -> None:
    """On ``variant``'s fp32 OpenVINO model (converted as workers convert it): "head" keeps exactly
    the classifier's MatMul (weights (classes, 2304)), "head+stems" adds exactly the two
    convolutions that read the input, one per pathway (the only convolutions over 3 channels)."""
    from export.int8 import _layers_kept
    from export.scriptable import script_slowfast
    from export.variants import VARIANTS, build, contract_for, read_label_file
    from handler.runtime_openvino import convert

    chosen = VARIANTS[variant]
    contract = contract_for(chosen, read_label_file(chosen.labels_file))
    model = convert(script_slowfast(build(chosen)), contract)
    ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()}

    assert _layers_kept(model, "nothing") == []
    [head] = _layers_kept(model, "head")
    weight = ops[head].input_value(1).get_partial_shape().to_shape()
    assert ops[head].get_type_name() == "MatMul" and sorted(weight) == sorted([contract.num_classes, chosen.embedding_size])

    kept = _layers_kept(model, "head+stems")
    assert kept[0] == head and len(kept) == 3
    stems = [ops[name] for name in kept[1:]]
    over_rgb = [op.get_friendly_name() for op in ops.values()
                if op.get_type_name() == "Convolution" and op.input_value(1).get_partial_shape().to_shape()[1] == 3]
    assert sorted(kept[1:]) == sorted(over_rgb)
    # One per pathway, each over its own input: the slow one's (T/alpha frames, 1-frame kernel) and
    # the fast one's (T frames, 5-frame kernel).
    frames_and_kernels = sorted((op.input_value(0).get_partial_shape()[2].get_length(),
                                 op.input_value(1).get_partial_shape().to_shape()[2]) for op in stems)
    assert frames_and_kernels == [(chosen.num_frames // chosen.alpha, 1), (chosen.num_frames, 5)]


def test_the_layers_kept_in_fp32_are_found_in_the_default_variants_graph() -> None:
    layers_kept_in("slowfast_r50")


@pytest.mark.slow  # minutes on 2 cores: make test-all
@pytest.mark.parametrize("variant", ["slowfast_r101", "slowfast_16x8_r101_50_50"])
def test_the_layers_kept_in_fp32_are_found_in_every_variants_graph(variant: str) -> None:
    layers_kept_in(variant)


# -- heavy: quantize, store, serve -----------------------------------------------------------------


@pytest.fixture(scope="module")
def calibration_folder(shared_videos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two short videos: one window calibrated on, one held out."""
    folder = tmp_path_factory.mktemp("calibration")
    for name in SHORT_VIDEOS:
        shutil.copy(shared_videos / name, folder / name)
    return folder


def quantized_in_place(pt: Path, folder: Path, **kwargs: float) -> Path:
    """``pt`` saved again with an int8 model calibrated on ``folder`` (floor 0: the tests check that
    the figures are true, not that they are high)."""
    from export.save import load_with_contract, save_with_contract

    module, contract = load_with_contract(pt)
    contract, extra = int8_for_export(module, contract, folder, floor=0.0, **kwargs)
    save_with_contract(module, contract, pt, extra)
    return pt


@pytest.fixture(scope="module")
def int8_model(calibration_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Path]:
    """(the perturbed model's .pt with an int8 model in it, the calibration folder)."""
    from tests.checkpoints import export_perturbed

    pt = export_perturbed(tmp_path_factory.mktemp("int8") / f"{MODEL}.pt")
    return quantized_in_place(pt, calibration_folder), calibration_folder


def assert_stored_figures_are_true(pt: Path, folder: Path) -> Int8Figures:
    """The figures stored in ``pt`` equal a recomputation: the same held-out windows (made with
    the file's own contract) through fp32 OpenVINO (converted as workers convert) and through the
    served int8 runtime, compared under the contract's activation."""
    from export.save import load_with_contract
    from handler.runtime_openvino import OpenVinoRuntime, convert
    import openvino as ov

    module, contract = load_with_contract(pt)
    figures = contract.int8
    assert figures is not None
    windows = calibration_set(folder, contract)
    assert len(windows.held_out) == figures.held_out_windows
    fp32 = ov.Core().compile_model(convert(module, contract), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    int8 = OpenVinoRuntime.load(pt, ServeOptions(warmup=False))
    assert int8.name == "openvino-int8"
    reference = torch.cat([torch.from_numpy(fp32([p.numpy() for p in w.pathways])[0].copy()) for w in windows.held_out])
    served = torch.cat([int8.infer(w.pathways).logits for w in windows.held_out])
    assert reference.shape == served.shape == (len(windows.held_out), contract.num_classes)
    again = agreement(reference, served, contract.activation)
    assert again["top1_agreement"] == figures.top1_agreement
    assert again["top5_overlap"] == figures.top5_overlap
    assert again["max_abs_probability_delta"] == pytest.approx(figures.max_abs_probability_delta, abs=1e-4)
    assert again["logit_correlation"] == pytest.approx(figures.logit_correlation, abs=1e-5)
    return figures


@pytest.mark.heavy
def test_served_int8_answers_name_it_and_its_stored_figures_are_true(int8_model: Tuple[Path, Path]) -> None:
    from harness.inproc import InProcessHandler
    from handler.runtime_openvino import INT8_RUNTIME

    pt, folder = int8_model
    figures = assert_stored_figures_are_true(pt, folder)
    assert (figures.calibration_windows, figures.held_out_windows) == (1, 1)

    # What a worker serves: the stored int8 model, named so in every answer with its figures.
    handler = InProcessHandler(pt)
    assert handler.runtime.name == INT8_RUNTIME
    answer = handler.handle((folder / SHORT_VIDEOS[0]).read_bytes())
    assert answer["runtime"] == "openvino-int8"
    assert answer["int8_agreement"]["top1_agreement"] == round(figures.top1_agreement, 4)
    assert answer["int8_agreement"]["held_out_windows"] == 1


@pytest.mark.slow  # r101 quantized: minutes on 2 cores (make test-all)
def test_a_non_default_variant_quantizes_and_serves_as_int8(calibration_folder: Path, tmp_path: Path) -> None:
    """slowfast_r101 (the cheapest variant beside the default: the same 32-frame windows, twice the
    layers): its own graph quantized, measured and served. One rung (target 0): the ladder is the
    same code whatever the variant."""
    from export.save import load_with_contract
    from harness.inproc import InProcessHandler
    from tests.checkpoints import export_perturbed

    pt = quantized_in_place(export_perturbed(tmp_path / "slowfast_r101.pt", variant="slowfast_r101"),
                            calibration_folder, target=0.0)
    _, contract = load_with_contract(pt)
    assert (contract.variant, contract.model_name) == ("slowfast_r101", "slowfast_r101")
    figures = assert_stored_figures_are_true(pt, calibration_folder)
    assert figures.kept_fp32 == "nothing"
    answer = InProcessHandler(pt).handle((calibration_folder / SHORT_VIDEOS[1]).read_bytes())
    assert (answer["model"], answer["runtime"]) == ("slowfast_r101", "openvino-int8")
    assert answer["int8_agreement"]["held_out_windows"] == 1


# A fine-tuned multi-label head: 3 rows of the perturbed default head (tests/checkpoints.py).
SIGMOID_LABELS = ("pour coffee", "open door", "feed cat")
SIGMOID_ROWS = [7, 140, 273]


@pytest.mark.slow  # about a minute on 2 cores (make test-all)
def test_a_fine_tuned_sigmoid_head_of_three_classes_exports_as_int8_and_answers_sigmoid_probabilities(
    calibration_folder: Path, tmp_path: Path,
) -> None:
    """A fine-tuned multi-label checkpoint through the steps of ``python -m export --checkpoint ckpt
    --labels classes.txt --activation sigmoid --precision int8`` (weights read and their variant
    recognised, the contract with its labels and activation, scripted, quantized; the exporter's
    eager-vs-scripted checks, tests/test_finetuned.py's, would double this test's time): top-5 of
    a 3-class head does not crash, the answer's probabilities are the per-class sigmoid of the int8
    logits (not a softmax), the stored figures are true."""
    from export.__main__ import load_weights
    from export.build import build_variant
    from export.save import load_with_contract, save_with_contract
    from export.scriptable import script_slowfast
    from export.variants import contract_for, resolve_labels
    from handler.runtime_openvino import int8_model as stored_int8
    from harness.inproc import InProcessHandler
    from tests.checkpoints import perturbed_slowfast

    state = perturbed_slowfast().state_dict()
    head = [key for key in state if key.endswith("proj.weight") and state[key].dim() == 2][-1]  # (400, 2304)
    state[head] = state[head][SIGMOID_ROWS].clone()
    bias = head.replace("weight", "bias")
    state[bias] = state[bias][SIGMOID_ROWS].clone()
    checkpoint = tmp_path / "multilabel.pyth"
    torch.save({"model_state": state}, checkpoint)
    labels = tmp_path / "classes.txt"
    labels.write_text("\n".join(SIGMOID_LABELS) + "\n")
    variant, weights, origin = load_weights(str(checkpoint), None, "my_multilabel", seed=0)
    contract = contract_for(variant, resolve_labels(variant, len(SIGMOID_LABELS), labels), model_name="my_multilabel",
                            weights=origin, activation="sigmoid")
    module = script_slowfast(build_variant(variant, weights, source=str(checkpoint)))
    # One rung (target 0): a 3-class head agrees on its one held-out window or not; the ladder is not
    # what this test is about.
    contract, extra = int8_for_export(module, contract, calibration_folder, floor=0.0, target=0.0)
    pt = tmp_path / "my_multilabel.pt"
    save_with_contract(module, contract, pt, extra)
    _, contract = load_with_contract(pt)
    assert (contract.activation, contract.labels, contract.variant) == ("sigmoid", SIGMOID_LABELS, "slowfast_r50")
    assert stored_int8(pt) is not None
    figures = assert_stored_figures_are_true(pt, calibration_folder)
    assert figures.top5_overlap == 1.0  # a 3-class head's top 5 is all of it

    handler = InProcessHandler(pt)
    answer = handler.handle((calibration_folder / SHORT_VIDEOS[0]).read_bytes(), capture=True)
    assert answer["runtime"] == "openvino-int8" and answer["model"] == "my_multilabel"
    assert sorted(p["label"] for p in answer["predictions"]) == sorted(SIGMOID_LABELS)  # top 5 of 3: all 3
    [inputs] = handler.last_inputs
    logits = handler.runtime.infer(inputs).logits[0]  # the served int8 runtime on the answer's own input
    answered = torch.tensor([{p["label"]: p["probability"] for p in answer["predictions"]}[label] for label in SIGMOID_LABELS])
    assert float(answered.min()) >= 0.0 and float(answered.max()) <= 1.0
    assert float((answered - torch.sigmoid(logits)).abs().max()) < 1e-5
    assert float((answered - torch.softmax(logits, 0)).abs().max()) > 1e-3, "a sigmoid head's answer is no softmax"


def test_int8_asked_of_a_file_without_it_is_refused(tmp_path: Path) -> None:
    from handler.runtime_openvino import choose_precision

    with pytest.raises(ValueError, match="carries no int8 model: `make mar PRECISION=int8`"):
        choose_precision("int8", frozenset(), int8=False)
    assert choose_precision("auto", frozenset({"avx512_bf16"}), int8=True)[0] == "int8"
    assert choose_precision("bf16", frozenset({"avx512_bf16"}), int8=True)[0] == "bf16"
    assert INT8_XML.endswith(".xml")


def test_a_file_without_an_int8_model_is_told_from_its_zip_directory(tmp_path: Path) -> None:
    from export.reference import default_contract
    from export.save import save_with_contract
    from handler.contract import stored_files
    from handler.runtime_openvino import int8_model

    pt = tmp_path / "tiny.pt"
    save_with_contract(torch.jit.script(torch.nn.Identity()), default_contract(), pt, {"other.bin": b"\x00\xff"})
    assert int8_model(pt) is None
    assert stored_files(pt, ("other.bin",)) == [b"\x00\xff"]  # bytes come back as written
    assert stored_files(pt, ("other.bin", INT8_XML)) is None
