"""The action detector as a variant (issue 27, part 1): its row against pytorchvideo's hub network,
its contract, scripted == eager, the person detector's weights rules and its place in the .mar.

The full export (256-pixel clips, a scripted Faster R-CNN saved beside it) runs behind the slow
marker; here the scripted network is checked on small clips, which exercise the same code."""

from __future__ import annotations

import json
import logging
import zipfile

import pytest
import torch

from export.archive import packed_files
from export.person_detector import ARCHITECTURE, COCO_PERSON, export_person_detector
from export.save import save_with_contract
from export.scriptable_detection import script_detector
from export.variants import VARIANTS, build, contract_for, read_label_file
from export.verify_detection import check_detector, detection_reference
from handler.contract import CONTRACT_FILE, ContractError, DetectionContract, PersonDetector, PreprocessContract

NAME = "slowfast_r50_detection"


def detection_contract(**changes) -> PreprocessContract:
    variant = VARIANTS[NAME]
    return contract_for(variant, read_label_file(variant.labels_file), **changes)


def test_the_row_fits_pytorchvideos_hub_network():
    """The RoI head pools over exactly the frames the contract feeds it, aligns 7x7 boxes at 1/16
    scale on 2048 + 256 channels, and AVA's 80 actions come out through a sigmoid."""
    from pytorchvideo.models.hub.slowfast import checkpoint_paths

    variant = VARIANTS[NAME]
    with torch.device("meta"):
        model = variant.builder(pretrained=False)
    contract = detection_contract()
    slow_pool, fast_pool = model.model.blocks[5].pool
    assert tuple(slow_pool.kernel_size) == (contract.slow_frames, 1, 1) == (8, 1, 1)
    assert tuple(fast_pool.kernel_size) == (contract.num_frames, 1, 1) == (32, 1, 1)
    head = model.detection_head
    assert tuple(head.roi_layer.output_size) == (7, 7) and head.roi_layer.spatial_scale == 1 / 16
    assert head.proj.in_features == contract.embedding_size == 2304
    assert head.proj.out_features == contract.num_classes == 80
    assert isinstance(head.activation, torch.nn.Sigmoid) and contract.activation == "sigmoid"
    assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - variant.params_m) < 0.01
    assert contract.task == "detection" and contract.detection == DetectionContract(keyframe_at=0.5)
    # ava_inference_transform: 1 s clips, 32 frames, alpha 4, short side 256 and no crop.
    assert (contract.window_seconds, contract.num_frames, contract.alpha) == (1.0, 32, 4)
    assert contract.crop_size == contract.short_side == 256
    assert variant.checkpoint_url == checkpoint_paths[NAME]
    assert contract.labels[0] == "bend/bow (at the waist)" and contract.labels[-1] == "watch (a person)"


def test_the_detection_contract_survives_json_and_older_files_read_as_classifiers():
    detector = PersonDetector(file="x.persons.pt", architecture=ARCHITECTURE, label_index=1, score_threshold=0.75,
                              weights="random")
    contract = detection_contract()
    contract = contract.__class__(**{**contract.__dict__, "detection": DetectionContract(0.5, detector)})
    assert PreprocessContract.from_json(contract.to_json()) == contract
    classifier = contract_for(VARIANTS["slowfast_r50"], ["a", "b"])
    old = json.loads(classifier.to_json())
    del old["task"], old["detection"]
    old["version"] = 3
    assert PreprocessContract.from_json(json.dumps(old)) == classifier
    with pytest.raises(ContractError, match="detection settings"):
        classifier.__class__(**{**classifier.__dict__, "task": "detection"})
    with pytest.raises(ContractError, match="keyframe_at"):
        contract.__class__(**{**contract.__dict__, "detection": DetectionContract(1.5)})


@pytest.fixture(scope="module")
def eager_detector() -> torch.nn.Module:
    model = build(VARIANTS[NAME], num_classes=80, seed=0)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():  # pytorchvideo zero-inits each block's last BN scale: give every branch a say
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.weight.copy_(torch.empty(module.weight.shape).uniform_(0.5, 1.5, generator=generator))
    return model.eval()


@pytest.mark.heavy  # scripting a network: tens of seconds
def test_the_scripted_detector_equals_the_eager_one(eager_detector):
    """Logits, sigmoid probabilities and per-box features equal pytorchvideo's own forward (two clips
    with boxes spread over both, and a non-square frame); the caller's list is left alone."""
    contract = detection_contract()
    scripted = script_detector(eager_detector)
    assert list(scripted.state_dict()) == list(eager_detector.state_dict())
    cases = ((1, 64, 64, 3), (2, 64, 96, 5))
    expected = detection_reference(eager_detector, contract, cases)
    assert float(expected[cases[1]][0].std()) > 1e-3  # probabilities that differ from box to box
    assert check_detector(scripted, expected, contract, "scripted") <= 1e-4


def test_the_person_detector_is_off_loudly_when_its_weights_cannot_be_fetched(tmp_path, monkeypatch, caplog):
    import export.person_detector as person_detector

    monkeypatch.setattr(person_detector, "coco_weights_url", lambda: "http://127.0.0.1:9/fasterrcnn_coco.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    (tmp_path / f"{NAME}.persons.pt").write_bytes(b"stale")
    with caplog.at_level(logging.WARNING):
        assert export_person_detector(tmp_path / f"{NAME}.pt", None) is None
    assert "PERSON DETECTION IS OFF" in caplog.text
    assert not (tmp_path / f"{NAME}.persons.pt").exists()  # no stale detector is packed


@pytest.mark.heavy  # scripting a network: tens of seconds
def test_a_random_person_detector_is_scripted_beside_the_model_and_packed(tmp_path):
    found = export_person_detector(tmp_path / f"{NAME}.pt", "random", seed=1)
    assert found is not None and (found.architecture, found.label_index, found.score_threshold) == (ARCHITECTURE, COCO_PERSON, 0.75)
    assert "random weights, seed 1" in found.weights
    detector = torch.jit.load(str(tmp_path / found.file))
    with torch.inference_mode():
        _, answers = detector([torch.rand(3, 64, 80)])
    assert set(answers[0]) == {"boxes", "labels", "scores"}
    contract = detection_contract()
    contract = contract.__class__(**{**contract.__dict__, "detection": DetectionContract(0.5, found)})
    save_with_contract(torch.jit.script(torch.nn.Identity()), contract, tmp_path / f"{NAME}.pt")
    assert packed_files(tmp_path / f"{NAME}.pt") == [tmp_path / found.file]
    (tmp_path / found.file).unlink()
    with pytest.raises(FileNotFoundError, match="re-export"):
        packed_files(tmp_path / f"{NAME}.pt")
    with zipfile.ZipFile(tmp_path / f"{NAME}.pt") as archive:
        assert any(name.endswith(CONTRACT_FILE) for name in archive.namelist())


@pytest.mark.slow
def test_the_full_export_checks_scripted_against_eager_and_writes_both_files(tmp_path):
    """``python -m export`` for the detector: minutes on a loaded CPU (RoIAlign at 256 x 320)."""
    from export.__main__ import export
    from export.save import load_with_contract

    contract = export(tmp_path / f"{NAME}.pt", "random", seed=0, person_detector="random")
    _, saved = load_with_contract(tmp_path / f"{NAME}.pt")
    assert saved == contract and saved.detection.person_detector.file == f"{NAME}.persons.pt"
    assert (tmp_path / f"{NAME}.persons.pt").is_file()
