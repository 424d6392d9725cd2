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


# -- heavy: quantize, store, serve -----------------------------------------------------------------


@pytest.fixture(scope="module")
def int8_model(shared_videos: Path, tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Path]:
    """(the perturbed model's .pt with an int8 model in it, the calibration folder)."""
    from export.save import load_with_contract, save_with_contract
    from tests.checkpoints import export_perturbed

    folder = tmp_path_factory.mktemp("calibration")
    for name in SHORT_VIDEOS:
        shutil.copy(shared_videos / name, folder / name)
    pt = export_perturbed(tmp_path_factory.mktemp("int8") / f"{MODEL}.pt")
    module, contract = load_with_contract(pt)
    # floor 0: this test checks that the figures are true, not that they are high
    contract, extra = int8_for_export(module, contract, folder, floor=0.0)
    save_with_contract(module, contract, pt, extra)
    return pt, folder


@pytest.mark.heavy
def test_served_int8_answers_name_it_and_its_stored_figures_are_true(int8_model: Tuple[Path, Path]) -> None:
    from export.save import load_with_contract
    from handler.runtime_openvino import INT8_RUNTIME, OpenVinoRuntime, convert
    from harness.inproc import InProcessHandler
    import openvino as ov

    pt, folder = int8_model
    module, contract = load_with_contract(pt)
    figures = contract.int8
    assert figures is not None and (figures.calibration_windows, figures.held_out_windows) == (1, 1)

    # What a worker serves: the stored int8 model, named so in every answer with its figures.
    handler = InProcessHandler(pt)
    assert handler.runtime.name == INT8_RUNTIME
    answer = handler.handle((folder / SHORT_VIDEOS[0]).read_bytes())
    assert answer["runtime"] == "openvino-int8"
    assert answer["int8_agreement"]["top1_agreement"] == round(figures.top1_agreement, 4)
    assert answer["int8_agreement"]["held_out_windows"] == 1

    # The stored figures equal a recomputation: the same held-out windows through fp32 OpenVINO
    # (converted as workers convert) and through the served int8 runtime.
    windows = calibration_set(folder, contract)
    fp32 = ov.Core().compile_model(convert(module, contract), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    int8 = OpenVinoRuntime.load(pt, ServeOptions(warmup=False))
    reference = torch.cat([torch.from_numpy(fp32([p.numpy() for p in w.pathways])[0].copy()) for w in windows.held_out])
    served = torch.cat([int8.infer(w.pathways).logits for w in windows.held_out])
    again = agreement(reference, served, contract.activation)
    assert again["top1_agreement"] == figures.top1_agreement
    assert again["top5_overlap"] == figures.top5_overlap
    assert again["max_abs_probability_delta"] == pytest.approx(figures.max_abs_probability_delta, abs=1e-4)
    assert again["logit_correlation"] == pytest.approx(figures.logit_correlation, abs=1e-5)


@pytest.mark.heavy
def test_int8_is_read_from_the_file_and_explicit_precisions_still_convert(int8_model: Tuple[Path, Path], tmp_path: Path) -> None:
    from handler.runtime_openvino import OpenVinoRuntime, int8_model as stored_int8

    pt, _ = int8_model
    assert stored_int8(pt) is not None
    cache = tmp_path / "cache"
    # auto serves the stored int8 model: nothing converted, nothing cached
    assert OpenVinoRuntime.load(pt, ServeOptions(warmup=False), cache_root=cache).name == "openvino-int8"
    assert not cache.exists()
    # fp32 asked for: converted from the same .pt, as before
    assert OpenVinoRuntime.load(pt, ServeOptions(warmup=False, cpu_precision="fp32"), cache_root=cache).name == "openvino-fp32"
    assert cache.is_dir()


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
