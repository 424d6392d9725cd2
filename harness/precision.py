"""The precision an answer was computed at, and how far it may lie from an fp32 reference.

``cpu_precision: auto`` (the default) serves bf16 on a CPU that computes it natively
(avx512_bf16, amx_bf16) and fp32 elsewhere, so the same test meets both. A test that compares an
answer with an fp32 reference therefore does one of two things, and says which:
- pins the precision it is about (``FP32``: handler settings for model-config.yaml), or
- takes its tolerance from the runtime the answer names (``probability_tolerance``).
Tests that compare two answers of one runtime to the same views (a window alone and in a
timeline, a request alone and batched) need neither: they are equal at any precision.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import yaml

from harness.paths import MODEL_CONFIG

# Handler settings that pin fp32 on every CPU.
FP32: Dict[str, Any] = {"cpu_precision": "fp32"}

# Largest |Δ probability| against fp32 TorchScript, by the answer's precision and the test
# checkpoint (tests/checkpoints.py). The non-flat checkpoint's logits are small differences of
# large features: bf16 moves its probabilities by up to 0.02 (measured on an AMD EPYC with
# avx512_bf16), the perturbed one's by 0.0005. fp32 runtimes (OpenVINO, frozen TorchScript)
# differ from the scripted module by reordered sums only.
PROBABILITY_TOLERANCE = {
    ("fp32", "non_flat"): 2e-3,
    ("bf16", "non_flat"): 0.03,
    ("fp32", "perturbed"): 1e-3,
    ("bf16", "perturbed"): 5e-3,
}


def precision_of(runtime: str) -> str:
    """``"openvino-bf16"`` -> ``"bf16"``: the precision a runtime name (an answer's ``runtime``) says."""
    return runtime.rsplit("-", 1)[-1]


def probability_tolerance(runtime: str, checkpoint: str) -> float:
    """Max |Δ probability| of an answer computed by ``runtime`` from the fp32 reference."""
    return PROBABILITY_TOLERANCE[(precision_of(runtime), checkpoint)]


def model_config(directory: Path, **handler_settings: Any) -> Path:
    """The repo's model-config.yaml with ``handler_settings`` over its ``handler:`` section,
    written to ``directory``; returns its path, for an archive (``build_archive``). In-process,
    ``InProcessHandler(pt, handler=...)`` takes the settings themselves."""
    config = yaml.safe_load(MODEL_CONFIG.read_text())
    config["handler"].update(handler_settings)
    path = directory / "model-config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
