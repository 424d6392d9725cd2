"""Embeddings mean something: judged with a checkpoint whose features depend on the input.

Through the handler in-process (parse -> decode -> run -> render, as served): the same clip gives
the same vector, different real clips are told apart, and a mirrored clip stays closer to its
original than any other clip is. In fp32 on every CPU (bf16 moves this checkpoint's answers by
up to 0.02, harness/precision.py): the question here is what the vector means, not its precision
(tests/test_runtime_fidelity.py judges bf16's embeddings).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import pytest
import torch

from export.reference import EMBEDDING_SIZE, NUM_CLASSES
from harness.inproc import InProcessHandler
from harness.precision import FP32, precision_of
from harness.synth import mirrored
from tests.checkpoints import NON_FLAT_PT

ORIGINAL = "tv__WUzgd7C1pWA.mp4"
OTHERS = ("tv__basketball.mp4", "tv__v_SoccerJuggling_g23_c01.avi")


@pytest.fixture(scope="module")
def embed(non_flat_model_dir: Path):
    handler = InProcessHandler(non_flat_model_dir / NON_FLAT_PT, handler=FP32)  # raises if a request is refused
    assert precision_of(handler.runtime.name) == "fp32"
    return lambda video: handler.handle(video, {"output": "both"})


def cosine(a: Dict, b: Dict) -> float:
    x, y = torch.tensor(a["embedding"]["values"]), torch.tensor(b["embedding"]["values"])
    return float(torch.nn.functional.cosine_similarity(x, y, dim=0))


@pytest.fixture(scope="module")
def answers(embed, shared_videos: Path) -> Dict[str, Dict]:
    original = (shared_videos / ORIGINAL).read_bytes()
    out = {name: embed((shared_videos / name).read_bytes()) for name in (ORIGINAL,) + OTHERS}
    out["again"] = embed(original)
    out["mirrored"] = embed(mirrored(original))
    return out


def test_the_checkpoint_answers_are_not_flat(answers):
    # Otherwise the comparisons below would prove nothing.
    tops = [answers[name]["predictions"][0]["probability"] for name in (ORIGINAL,) + OTHERS]
    assert max(tops) > 20 / NUM_CLASSES, tops  # 20x uniform


def test_the_same_clip_twice_gives_the_same_vector(answers):
    assert answers["again"]["embedding"]["values"] == answers[ORIGINAL]["embedding"]["values"]
    assert answers[ORIGINAL]["embedding"]["dim"] == EMBEDDING_SIZE


def test_different_clips_are_told_apart(answers):
    for other in OTHERS:
        assert cosine(answers[ORIGINAL], answers[other]) < 0.99, other


def test_a_mirrored_clip_is_closer_to_its_original_than_other_clips(answers):
    mirrored_cosine = cosine(answers[ORIGINAL], answers["mirrored"])
    assert mirrored_cosine > max(cosine(answers[ORIGINAL], answers[other]) for other in OTHERS)
    assert mirrored_cosine < 1.0  # it is a different input
