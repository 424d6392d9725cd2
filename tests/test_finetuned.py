"""A model of your own: a SlowFast fine-tuned on 12 classes, saved by PyTorch Lightning, exported
with its label file, archived and served by a real TorchServe beside the default model; a
multi-label (sigmoid) head answering with ``threshold``; a label file of the wrong length refused.

The 12-class head is 12 rows of the non-flat default model's calibrated head (tests/checkpoints.py), so its
answers are known exactly: softmax over a subset of logits is the full head's softmax restricted to
those classes and renormalised.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Dict

import pytest
import torch
from harness.inproc import InProcessHandler
from harness.precision import FP32, model_config, precision_of, probability_tolerance
from export.__main__ import main as export_main
from export.archive import build_archive
from export.save import load_with_contract, save_with_contract
from export.reference import NUM_CLASSES
from export.variants import DEFAULT_VARIANT, VARIANTS, build
from harness.torchserve import LocalTorchServe
from tests.checkpoints import NON_FLAT_PT

NAME = "my_actions"
LABELS = ("pour coffee", "open door", "tie shoelaces", "water plants", "fold towel", "feed cat",
          "wash dishes", "sweep floor", "iron shirt", "hang picture", "peel potato", "wrap gift")
KEEP = list(range(7, NUM_CLASSES, 33))[:12]  # the rows of the default head the fine-tuned head keeps
CLIP = "tv__WUzgd7C1pWA.mp4"


def lightning_checkpoint(state: Dict[str, torch.Tensor], path: Path) -> Path:
    """As pytorchvideo's Lightning tutorial saves it: the network under ``self.model``."""
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 9, "global_step": 1200,
                "pytorch-lightning_version": "2.2.0", "hyper_parameters": {"num_classes": len(LABELS), "lr": 0.01}},
               path)
    return path


@pytest.fixture(scope="session")
def fine_tuned(non_flat_model_dir: Path, tmp_path_factory) -> Dict[str, Path]:
    """The 12-class Lightning checkpoint, its label file and its export (``python -m export``, with
    every parity check), named ``my_actions``."""
    directory = tmp_path_factory.mktemp("fine_tuned")
    state = torch.load(non_flat_model_dir / "non_flat.pyth", weights_only=True)["model_state"]
    state["blocks.6.proj.weight"] = state["blocks.6.proj.weight"][KEEP].clone()
    state["blocks.6.proj.bias"] = state["blocks.6.proj.bias"][KEEP].clone()
    checkpoint = lightning_checkpoint(state, directory / "epoch=9-step=1200.ckpt")
    labels = directory / "classes.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    pt = directory / f"{NAME}.pt"
    assert export_main(["--output", str(pt), "--checkpoint", str(checkpoint), "--labels", str(labels)]) == 0
    return {"pt": pt, "checkpoint": checkpoint, "labels": labels, "dir": directory}


def test_export_reads_classes_from_the_head_labels_from_the_file_and_the_variant_from_the_shapes(fine_tuned):
    _, contract = load_with_contract(fine_tuned["pt"])
    assert contract.labels == LABELS and contract.num_classes == 12
    assert (contract.model_name, contract.variant) == (NAME, DEFAULT_VARIANT)
    assert (contract.activation, contract.channel_order) == ("softmax", "RGB")
    assert contract.weights.startswith("checkpoint epoch=9-step=1200.ckpt sha256:")


TORCHSCRIPT = {"cpu_runtime": "torchscript", "warmup": False}


def test_served_beside_the_default_model_each_with_its_own_name_and_labels(
    fine_tuned, built, non_flat_model_dir, shared_videos, tmp_path
):
    video = (shared_videos / CLIP).read_bytes()
    # Judged against the fp32 answer at 2e-3: served in fp32 on every CPU (`auto` would be bf16
    # where the CPU has it, and bf16 moves this checkpoint's probabilities by up to 0.02).
    served_config = model_config(tmp_path, **FP32)
    mar = build_archive(fine_tuned["pt"], tmp_path / f"{NAME}.mar", served_config)
    _, default_contract = load_with_contract(built["pt"])
    with LocalTorchServe(built["mar"], tmp_path / "ts", also=[mar]) as server:
        mine = server.predict(video, {"topk": "12"}, model_name=NAME)
        default = server.predict(video)
    assert mine.status_code == 200, mine.text
    assert default.status_code == 200, default.text
    mine, default = mine.json(), default.json()
    assert mine["model"] == NAME and mine["weights"].startswith("checkpoint epoch=9-step=1200.ckpt")
    assert precision_of(mine["runtime"]) == "fp32", mine["runtime"]
    assert sorted(p["label"] for p in mine["predictions"]) == sorted(LABELS)
    assert sum(p["probability"] for p in mine["predictions"]) == pytest.approx(1.0, abs=1e-4)
    assert default["model"] == default_contract.model_name and len(default["predictions"]) == 5
    assert {p["label"] for p in default["predictions"]} <= set(default_contract.labels)
    assert not {p["label"] for p in default["predictions"]} & set(LABELS)
    # The full network's answer, restricted to the kept rows and renormalised, is the fine-tuned answer.
    full = InProcessHandler(non_flat_model_dir / NON_FLAT_PT, handler=TORCHSCRIPT).handle(
        video, {"topk": str(NUM_CLASSES)})
    by_index = {p["index"]: p["probability"] for p in full["predictions"]}
    kept = torch.tensor([by_index[i] for i in KEEP])
    expected = kept / kept.sum()
    served = torch.tensor([{p["label"]: p["probability"] for p in mine["predictions"]}[label] for label in LABELS])
    tolerance = probability_tolerance(mine["runtime"], "non_flat")
    assert float((served - expected).abs().max()) < tolerance, (served, expected)
    assert [LABELS[i] for i in expected.argsort(descending=True)[:3]] == [p["label"] for p in mine["predictions"][:3]]


@pytest.mark.slow  # ~30 s of TorchScript forwards; tests/test_variants.py keeps the sigmoid contract in the default run
def test_a_sigmoid_model_answers_per_class_probabilities_above_a_threshold(fine_tuned, shared_videos, tmp_path):
    module, contract = load_with_contract(fine_tuned["pt"])
    multilabel = dataclasses.replace(contract, model_name="my_multilabel", activation="sigmoid")
    model_dir = tmp_path / "model"
    save_with_contract(module, multilabel, model_dir / "my_multilabel.pt")
    handler = InProcessHandler(model_dir / "my_multilabel.pt", handler=TORCHSCRIPT)
    video = (shared_videos / CLIP).read_bytes()
    everything = handler.handle(video, {"topk": "12", "crops": "3"}, capture=True)
    with torch.inference_mode():
        views = torch.cat([torch.sigmoid(module(inputs)) for inputs in handler.last_inputs])
    assert views.shape == (3, 12)
    expected = views.amax(0)  # Charades: a label seen in any view is in the clip
    answered = torch.tensor([{p["label"]: p["probability"] for p in everything["predictions"]}[label] for label in LABELS])
    assert float((answered - expected).abs().max()) < 1e-5
    assert float(answered.sum()) != pytest.approx(1.0, abs=0.05), "sigmoid probabilities need not sum to 1"
    ranked = sorted(expected.tolist(), reverse=True)
    threshold = (ranked[3] + ranked[4]) / 2  # four labels at or above it
    picked = handler.handle(video, {"threshold": f"{threshold:.6f}", "crops": "3"})
    assert [p["label"] for p in picked["predictions"]] == [LABELS[i] for i in expected.argsort(descending=True)[:4]]
    assert all(p["probability"] >= threshold for p in picked["predictions"])


def test_a_label_file_of_the_wrong_length_is_refused_at_export(tmp_path, caplog):
    state = build(VARIANTS[DEFAULT_VARIANT], num_classes=12, seed=1).state_dict()
    checkpoint = lightning_checkpoint(state, tmp_path / "last.ckpt")
    labels = tmp_path / "classes.txt"
    labels.write_text("\n".join(LABELS[:11]) + "\n")
    with caplog.at_level("ERROR", logger="export"):
        assert export_main(["--output", str(tmp_path / "x.pt"), "--checkpoint", str(checkpoint), "--labels", str(labels)]) == 1
    assert "classes.txt has 11 labels but the model's head has 12 classes" in caplog.text
    assert not (tmp_path / "x.pt").exists()
    caplog.clear()
    with caplog.at_level("ERROR", logger="export"):
        assert export_main(["--output", str(tmp_path / "x.pt"), "--checkpoint", str(checkpoint)]) == 1
    assert "the head has 12 classes but no label file was given" in caplog.text
