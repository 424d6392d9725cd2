"""Int8 beside bf16 and fp32: model-only forwards side by side, with the int8 model's agreement (issue 26).

The int8 model is the one the .pt carries (``make mar PRECISION=int8``); a .pt without one is
quantized here first, as ``make mar PRECISION=int8`` would (export/int8.py, a few minutes), into a
scratch copy. The three runtimes are loaded as a worker loads them (``load_runtime``: the name
says what actually runs; on a CPU without native bf16 the bf16 row runs fp32 and says so) and
their repetitions are interleaved so a change in the machine's load hits them all alike.

Section ``int8_variants`` (``python -m bench --sections int8_variants [--int8-variants a,b]``; not
in a default run, skipped by --quick: quantizing a variant costs minutes): the same three forwards
for every classifier of export/variants.py, scripted from random weights as bench/variants.py
does and quantized here on the default calibration folder (floor 0, nothing kept in fp32: random
weights cannot choose a rung). Their top-1 agreement is printed but says nothing about trained
weights: a randomly initialised SlowFast answers nearly every window alike.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from bench.util import fmt_ms, progress, ratio, summary, target
from handler.runtime import load_runtime
from handler.runtime_base import Runtime, dummy_pathways
from handler.serve_settings import ServeOptions
from harness.inproc import InProcessHandler

# (label, cpu_precision): each precision a CPU worker can serve.
PRECISIONS: List[Tuple[str, str]] = [("fp32", "fp32"), ("bf16", "bf16"), ("int8", "int8")]
# Where int8 should land against fp32 here to be worth its agreement price (issue 26: 0.55x bf16
# on an avx512_bf16 EPYC); on CPUs without VNNI the int8 kernels gain less.
TARGET_VS_FP32 = 0.75


def _int8_pt(pt: Path, scratch: Path) -> Tuple[Path, str]:
    """(a .pt carrying an int8 model, where it came from)."""
    from export.int8 import int8_for_export
    from export.save import load_with_contract, save_with_contract

    if carries_int8(pt):
        return pt, f"{pt.name} (make mar PRECISION=int8)"
    progress(f"  {pt.name} carries no int8 model: quantizing it here as `make mar PRECISION=int8` would")
    module, contract = load_with_contract(pt)
    contract, extra = int8_for_export(module, contract, None, floor=0.0)
    out = scratch / pt.name
    save_with_contract(module, contract, out, extra)
    return out, f"{pt.name} quantized by the bench (default calibration folder)"


def carries_int8(pt: Path) -> bool:
    from handler.runtime_openvino import int8_model

    return int8_model(pt) is not None


def _load_precisions(source: Path, base: ServeOptions) -> Dict[str, Runtime]:
    """Each precision of ``PRECISIONS`` loaded from ``source`` as a worker loads it."""
    return {label: load_runtime(source, torch.device("cpu"), dataclasses.replace(base, cpu_precision=precision))
            for label, precision in PRECISIONS}


def _timed_rows(loaded: Dict[str, Runtime], inputs: List[torch.Tensor], reps: int, warmup: int) -> Dict[str, Any]:
    """``{label: {runtime, forward_ms, vs_fp32, vs_bf16}}``: ``reps`` forwards of ``inputs`` each
    after ``warmup``, the precisions interleaved."""
    times: Dict[str, List[float]] = {label: [] for label in loaded}
    for rep in range(warmup + reps):
        for label, runtime in loaded.items():
            started = time.perf_counter()
            runtime.infer(inputs)
            if rep >= warmup:
                times[label].append((time.perf_counter() - started) * 1000)
    rows = {label: {"runtime": runtime.name, "forward_ms": summary(times[label])} for label, runtime in loaded.items()}
    fp32, bf16 = (rows[label]["forward_ms"]["median"] for label in ("fp32", "bf16"))
    for row in rows.values():
        row["vs_fp32"] = ratio(row["forward_ms"]["median"], fp32)
        row["vs_bf16"] = ratio(row["forward_ms"]["median"], bf16)
    return rows


def compare(handler: InProcessHandler, pt: Path, reps: int, warmup: int, quantize: bool = True) -> Dict[str, Any]:
    """Forward ms (median of ``reps`` after ``warmup``) of one view at each precision, and the
    int8 model's stored agreement figures. ``quantize`` False (quick runs): a .pt without an int8
    model skips the section instead of quantizing for minutes."""
    if not quantize and not carries_int8(pt):
        progress(f"  {pt.name} carries no int8 model: section skipped (quick run)")
        return {"skipped": f"{pt.name} carries no int8 model (`make mar PRECISION=int8`); quick runs do not quantize"}
    base = dataclasses.replace(handler.handler.options, warmup=False, cpu_runtime="openvino")
    with tempfile.TemporaryDirectory(prefix="slowfast-bench-int8-") as scratch:
        source, origin = _int8_pt(pt, Path(scratch))
        loaded = _load_precisions(source, base)
        figures = loaded["int8"].contract.int8
        rows = _timed_rows(loaded, handler.dummy_pathways(1), reps, warmup)
    for label, row in rows.items():
        progress(f"  {label} ({row['runtime']}): {row['forward_ms']['median']:.0f} ms ({row['vs_fp32']:.2f}x fp32)")
    return {"rows": rows, "source": origin, "agreement": dataclasses.asdict(figures) if figures else None}


def compare_variants(handler: InProcessHandler, names: Sequence[str], reps: int, warmup: int) -> Dict[str, Any]:
    """``{variant: {rows, agreement, quantize_s, frames}}`` for each classifier in ``names``: random
    weights scripted, quantized on the default calibration folder (floor 0, the ladder's first
    rung), saved with the int8 IR and timed at each precision on one random view of its own shape."""
    from export.int8 import KEEP_FP32_LADDER, int8_for_export
    from export.save import save_with_contract
    from export.scriptable import script_slowfast
    from export.variants import CLASSIFIERS, build, contract_for, read_label_file

    base = dataclasses.replace(handler.handler.options, warmup=False, cpu_runtime="openvino")
    results: Dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="slowfast-bench-int8-variants-") as scratch:
        for name in names:
            variant = CLASSIFIERS[name]
            contract = contract_for(variant, read_label_file(variant.labels_file), weights="random (timing only)")
            module = script_slowfast(build(variant))
            progress(f"  {name}: quantizing on the default calibration folder ...")
            started = time.perf_counter()
            contract, extra = int8_for_export(module, contract, None, floor=0.0, ladder=KEEP_FP32_LADDER[:1])
            quantize_s = time.perf_counter() - started
            source = Path(scratch) / name / f"{name}.pt"
            save_with_contract(module, contract, source, extra)
            del module
            # One random view of the variant's own shape (the forward's cost does not depend on the pixels).
            inputs = [torch.randn_like(p) for p in dummy_pathways(contract)]
            loaded = _load_precisions(source, base)
            rows = _timed_rows(loaded, inputs, reps, warmup)
            del loaded
            assert contract.int8 is not None
            results[name] = {"rows": rows, "agreement": dataclasses.asdict(contract.int8),
                             "quantize_s": round(quantize_s, 1), "frames": f"{variant.num_frames} x 2, alpha {variant.alpha}"}
            progress(f"  {name}: " + ", ".join(f"{label} {row['forward_ms']['median']:.0f} ms ({row['runtime']})"
                                               for label, row in rows.items()) + f"; quantized in {quantize_s:.0f} s")
    return results


def targets(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    return _served_targets(results) + _variant_targets(results)


def _served_targets(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    section = results.get("int8")
    if not section or "rows" not in section:
        return []
    rows, agreement = section["rows"], section.get("agreement") or {}
    int8, fp32, bf16 = (rows[k]["forward_ms"]["median"] for k in ("int8", "fp32", "bf16"))
    return [target(
        "int8 forward / fp32 forward", ratio(int8, fp32), "<=", TARGET_VS_FP32,
        f"{int8:.0f} ms / {fp32:.0f} ms (bf16 row: {bf16:.0f} ms as {rows['bf16']['runtime']})",
        f"top-1 agreement {agreement.get('top1_agreement', float('nan')):.3f} on {agreement.get('held_out_windows')} "
        f"held-out windows, {agreement.get('kept_fp32')} kept in fp32; int8 kernels need VNNI "
        f"(avx512_vnni/avx_vnni/amx) to run at their rate",
    )]


def _variant_targets(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    section = results.get("int8_variants") or {}
    out = []
    for name, v in section.items():
        if not isinstance(v, dict) or "rows" not in v:
            continue
        int8, fp32, bf16 = (v["rows"][k]["forward_ms"]["median"] for k in ("int8", "fp32", "bf16"))
        out.append(target(
            f"int8 forward / fp32 forward [{name}, random weights]", ratio(int8, fp32), "<=", TARGET_VS_FP32,
            f"{int8:.0f} ms / {fp32:.0f} ms (bf16 row: {bf16:.0f} ms as {v['rows']['bf16']['runtime']})",
            "int8 kernels need VNNI (avx512_vnni/avx_vnni/amx) to run at their rate",
        ))
    return out


def render(results: Dict[str, Any]) -> List[str]:
    section = results.get("int8")
    if not section:
        return []
    if "rows" not in section:
        return ["", f"3d. Int8: skipped: {section['skipped']}"]
    lines = ["", f"3d. Int8 beside bf16 and fp32, model-only forward of one view ({section['source']})"]
    header = ["precision", "runs as", "forward ms", "vs fp32"]
    rows = [[label, r["runtime"], fmt_ms(r["forward_ms"]["median"]), f"{r['vs_fp32']:.2f}x"] for label, r in section["rows"].items()]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines += ["  " + "  ".join(str(x).ljust(w) for x, w in zip(line, widths)) for line in [header, *rows]]
    a: Optional[Dict[str, Any]] = section.get("agreement")
    if a:
        lines.append(
            f"  int8 vs fp32 on {a['held_out_windows']} held-out windows of {a['held_out_videos']} videos "
            f"(calibrated on {a['calibration_windows']} windows of {a['calibration_videos']}): top-1 agreement "
            f"{a['top1_agreement']:.3f}, top-5 overlap {a['top5_overlap']:.3f}, max |delta p| "
            f"{a['max_abs_probability_delta']:.4f}, logit correlation {a['logit_correlation']:.5f}; kept in fp32: {a['kept_fp32']}"
        )
    return lines


# What the per-variant agreement column can and cannot say.
RANDOM_WEIGHTS_NOTE = (
    "top-1 agreement on random weights says nothing about trained weights (a randomly initialised SlowFast "
    "answers nearly every window alike); measure it on a real checkpoint: `make mar PRECISION=int8`"
)


def render_variants(results: Dict[str, Any]) -> List[str]:
    """Section 3e: per variant, the forward at each precision and int8's ratios to fp32 and bf16."""
    from bench.report import _table

    section = results.get("int8_variants")
    if not section:
        return []
    if "skipped" in section:
        return ["", f"3e. Int8 per SlowFast variant: skipped: {section['skipped']}"]
    lines = ["", "3e. Int8 per SlowFast variant, model-only forward of one view (random weights, quantized here "
             "on the default calibration folder, nothing kept in fp32)"]
    rows = []
    for name, v in section.items():
        r, a = v["rows"], v["agreement"]
        rows.append([name, v["frames"], fmt_ms(r["fp32"]["forward_ms"]["median"]),
                     f"{fmt_ms(r['bf16']['forward_ms']['median'])} ({r['bf16']['runtime']})",
                     fmt_ms(r["int8"]["forward_ms"]["median"]), f"{r['int8']['vs_fp32']:.2f}x", f"{r['int8']['vs_bf16']:.2f}x",
                     f"{a['top1_agreement']:.3f} ({a['held_out_windows']} windows)", f"{v['quantize_s']:.0f}"])
    lines += ["  " + line for line in _table(
        ["variant", "frames x rate", "fp32 ms", "bf16 ms (runs as)", "int8 ms", "int8/fp32", "int8/bf16",
         "top-1 agreement", "quantize s"], rows)]
    lines.append(f"  {RANDOM_WEIGHTS_NOTE}")
    return lines
