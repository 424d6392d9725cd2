"""Decoding meets a fuzzer (issue 25, point 2): mutated real videos through the real handler.

A fixed-seed short run (harness/fuzz.py: bit flips, truncations, container size-field edits,
splices, repeated chunks over ../shared/videos and synthesized MKV/TS/AVI/WebM) and every input
kept in tests/fuzz_regressions/: each must end in a 200 or a 4xx JSON error, within the decode
budget, with bounded memory. ``make fuzz N=...`` runs longer campaigns.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Dict

import pytest

from harness import fuzz

pytestmark = pytest.mark.heavy
SHORT_RUN_INPUTS = 24
SHORT_RUN_SEED = 20261206


@pytest.fixture(scope="module")
def handler(tmp_path_factory: pytest.TempPathFactory):
    return fuzz.target_handler(tmp_path_factory.mktemp("fuzz"))


@pytest.fixture(scope="module")
def seeds() -> Dict[str, bytes]:
    return fuzz.corpus()


def test_the_target_answers_an_unmutated_video(handler, seeds) -> None:
    # The harness itself works: a real file is answered 200 by the real handler's path.
    outcome = fuzz.run_one(handler, seeds["synth.mkv"])
    assert (outcome.status, outcome.failure) == (200, None)


def test_the_mutations_change_their_input_and_are_reproducible(seeds) -> None:
    first = [item.data for item in fuzz.inputs(seeds, 12, seed=5)]
    assert first == [item.data for item in fuzz.inputs(seeds, 12, seed=5)]
    originals = set(seeds.values())
    assert sum(data not in originals for data in first) >= 10
    rng = random.Random(0)
    mkv = seeds["synth.mkv"]
    for name, mutation in fuzz.MUTATIONS.items():
        assert mutation(rng, mkv, [seeds["synth.ts"]]) != mkv, name
    assert len(fuzz.repeat_chunk(rng, b"x" * fuzz.MAX_INPUT_BYTES, [])) <= 2 * fuzz.MAX_INPUT_BYTES


def test_the_size_field_mutation_finds_container_fields(seeds) -> None:
    for name in ("synth.mkv", "synth.avi"):
        assert fuzz._size_positions(seeds[name]), name


def test_a_short_fixed_seed_run_breaks_nothing(handler, seeds) -> None:
    kinds = set()
    failures = []
    for item in fuzz.inputs(seeds, SHORT_RUN_INPUTS, SHORT_RUN_SEED):
        outcome = fuzz.run_one(handler, item.data)
        kinds.add(outcome.status)
        if outcome.failure:
            failures.append(f"{item.seed_name} {'+'.join(item.mutations)} ({item.digest}): {outcome.failure}")
    assert not failures, "\n".join(failures)
    assert 200 in kinds and any(400 <= k < 500 for k in kinds)  # the run reached both sides


REGRESSION_FILES = sorted(fuzz.REGRESSIONS.glob("*.bin"))


@pytest.mark.parametrize("path", REGRESSION_FILES, ids=[p.stem for p in REGRESSION_FILES])
def test_every_kept_input_now_ends_well(handler, path: Path) -> None:
    outcome = fuzz.run_one(handler, path.read_bytes())
    assert outcome.failure is None, f"{path.name}: {outcome.failure}"
