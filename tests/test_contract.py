"""The preprocessing contract: one source of truth, validated, carried by the model file."""

import dataclasses
import json
import re

import pytest

from export.reference import LABELS_FILE, default_contract, read_labels
from export.variants import VARIANTS, contract_for
from handler.contract import ContractError, PreprocessContract


def test_reference_contract_matches_the_hub_tutorial():
    # The tutorial's model, named: this test is about slowfast_r50, whichever model is the default.
    contract = contract_for(VARIANTS["slowfast_r50"], read_labels())
    assert (contract.num_frames, contract.alpha, contract.slow_frames) == (32, 4, 8)
    assert contract.window_seconds == pytest.approx(64 / 30)
    assert (contract.short_side, contract.crop_size) == (256, 256)
    assert contract.mean == (0.45, 0.45, 0.45) and contract.std == (0.225, 0.225, 0.225)
    assert contract.num_classes == 400 and contract.labels[0] == "abseiling"
    assert contract.embedding_size == 2048 + 256 and "before dropout" in contract.embedding_source


def test_repo_labels_equal_the_shared_label_file(shared_videos):
    shared = (shared_videos.parent / "kinetics400_labels.txt").read_text().split("\n")
    assert list(read_labels(LABELS_FILE)) == [line.strip() for line in shared if line.strip()]


def test_json_round_trip_is_exact():
    contract = default_contract()
    assert PreprocessContract.from_json(contract.to_json()) == contract


@pytest.mark.parametrize(
    "change, message",
    [
        ({"num_frames": 30}, "multiple of alpha"),
        ({"crop_size": 300}, "crop_size"),
        ({"std": [0.2, 0.0, 0.2]}, "std"),
        ({"labels": ["a", "a"]}, "unique"),
        ({"version": 99}, "version"),
        ({"version": 1}, "version 1 is not"),  # a model exported before embeddings: re-export
        ({"embedding_size": 0}, "embedding"),
    ],
)
def test_inconsistent_contracts_are_refused(change, message):
    raw = json.loads(default_contract().to_json())
    raw.update(change)
    with pytest.raises(ContractError, match=message):
        PreprocessContract.from_json(json.dumps(raw))


def test_missing_fields_are_refused():
    with pytest.raises(ContractError, match="unreadable"):
        PreprocessContract.from_json('{"model_name": "x"}')


def test_contract_without_weights_reads_as_unknown():
    """Model files exported before the weights' origin was recorded still load."""
    raw = json.loads(default_contract().to_json())
    del raw["weights"]
    assert PreprocessContract.from_json(json.dumps(raw)).weights == "unknown"


def test_built_model_carries_the_reference_contract_and_its_weights(contract):
    assert dataclasses.replace(contract, weights="unknown") == default_contract()
    # Offline the default export falls back to random weights and says why (tests/test_checkpoint_download.py).
    assert re.fullmatch(r"random weights, seed \d+ \(predictions are meaningless(; .+)?\)|checkpoint .+ sha256:[0-9a-f]{12}",
                        contract.weights), contract.weights
