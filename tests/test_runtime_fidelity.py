"""Every CPU runtime and precision a worker can choose answers like TorchScript fp32 (issues 10, 12).

On real clips from ../shared/videos, preprocessed as the handler does, with a checkpoint whose
answers are not flat (tests/checkpoints.py, ``export_perturbed``): top-5 labels equal and in the same order, max
|Δ probability| <= 0.005 over all classes, embedding cosine similarity >= 0.999, and each
embedding closer to its own clip's than to another clip's. The reference is the scripted
module as exported (not frozen, fp32). The clips run as one micro-batch, so OpenVINO's dynamic
batch is exercised too. Two Kinetics clips by default; four more with ``-m slow``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch

from handler.serve_settings import ServeOptions
from handler.runtime import load_runtime
from handler.runtime_base import read_model
from handler.runtime_openvino import cpu_flags
from harness.paths import MODEL
from tests.checkpoints import export_perturbed
from tests.test_reference_parity import ours as window_views

MAX_PROBABILITY_DIFF = 0.005
MIN_COSINE = 0.999
DEFAULT_CLIPS = ("tv__WUzgd7C1pWA.mp4", "tv__R6llTwEh07w.mp4")
MORE_CLIPS = ("tv__basketball.mp4", "tv__v_SoccerJuggling_g23_c01.avi",
              "tv__RATRACE_wave_f_nm_np1_fr_goo_37.avi", "ii__realshort.mp4")
# A CPU without native bf16 (no avx512_bf16/amx_bf16, e.g. an EPYC without AVX-512) runs a bf16
# request in fp32, and the runtime's name says so.
NATIVE_BF16 = bool({"avx512_bf16", "amx_bf16"} & cpu_flags())
# (runtime name expected, handler options): every choice model-config.yaml allows a CPU worker.
RUNTIMES = [
    ("torchscript-fp32", {"cpu_runtime": "torchscript"}),
    ("openvino-fp32", {"cpu_runtime": "openvino", "cpu_precision": "fp32"}),
    ("openvino-bf16" if NATIVE_BF16 else "openvino-fp32", {"cpu_runtime": "openvino", "cpu_precision": "bf16"}),
]
Answer = Tuple[torch.Tensor, torch.Tensor]  # probabilities (B, classes), embeddings (B, D), float32


@pytest.fixture(scope="module")
def nonflat_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_perturbed(tmp_path_factory.mktemp("perturbed") / f"{MODEL}.pt")


class Clips:
    """The views of a set of clips and the fp32 TorchScript answer to them, computed once."""

    def __init__(self, pt: Path, videos: Path) -> None:
        self.module, self.contract = read_model(pt, torch.device("cpu"))
        self.videos = videos
        self.cache: Dict[Tuple[str, ...], Tuple[List[torch.Tensor], Answer]] = {}

    def get(self, names: Tuple[str, ...]) -> Tuple[List[torch.Tensor], Answer]:
        if names not in self.cache:
            views = [window_views(self.videos / name, self.contract)[1] for name in names]
            batch = [torch.stack([v[0] for v in views]), torch.stack([v[1] for v in views])]
            with torch.inference_mode():
                logits, embeddings = self.module.forward_with_embedding(batch)
            self.cache[names] = batch, (torch.softmax(logits, 1), embeddings)
        return self.cache[names]


@pytest.fixture(scope="module")
def clips(nonflat_pt: Path, shared_videos: Path) -> Clips:
    return Clips(nonflat_pt, shared_videos)


@pytest.mark.parametrize("names", [DEFAULT_CLIPS, pytest.param(MORE_CLIPS, marks=pytest.mark.slow)], ids=["kinetics", "more"])
@pytest.mark.parametrize("expected_name, settings", RUNTIMES, ids=["torchscript-fp32", "openvino-fp32", "openvino-bf16"])
def test_runtime_answers_like_torchscript_fp32(
    expected_name: str, settings: Dict[str, str], names: Tuple[str, ...], clips: Clips, nonflat_pt: Path
) -> None:
    batch, (reference_p, reference_e) = clips.get(names)
    # The checkpoint does its job: peaked answers (uniform would be 1/400 = 0.0025 each).
    assert float(reference_p.max(dim=1).values.min()) > 10 / reference_p.shape[1]
    runtime = load_runtime(nonflat_pt, torch.device("cpu"), ServeOptions(warmup=False, **settings))
    assert runtime.name == expected_name  # no silent fallback to another runtime
    outputs = runtime.infer(batch)
    probabilities, embeddings = outputs.probabilities, outputs.embedding

    for row, name in enumerate(names):
        ours_top5 = probabilities[row].topk(5).indices.tolist()
        assert ours_top5 == reference_p[row].topk(5).indices.tolist(), name
    worst = float((probabilities - reference_p).abs().max())
    assert worst <= MAX_PROBABILITY_DIFF, f"max |Δp| {worst:.4g}"
    normalized = torch.nn.functional.normalize(embeddings, dim=1)
    reference_n = torch.nn.functional.normalize(reference_e, dim=1)
    cosine = normalized @ reference_n.T  # [i, j]: our clip i against the reference's clip j
    own = cosine.diagonal()
    assert float(own.min()) >= MIN_COSINE, f"embedding cosine {own.tolist()}"
    others = cosine - 2 * torch.eye(len(names))
    assert bool((own > others.max(dim=1).values).all()), "an embedding is closer to another clip's"
    print(f"{runtime.name} on {len(names)} clips: max |Δp| {worst:.2g}, min cosine {float(own.min()):.6f}")
