"""The benchmark's targets: a figure passes, misses (saying what bounds it) or is not measured."""

from __future__ import annotations

import math

from bench.util import target


def test_a_target_passes_or_misses_by_its_operator_and_limit() -> None:
    assert target("t", 1.5, "<=", 1.5, "d")["pass"] is True
    assert target("t", 1.6, "<=", 1.5, "d")["pass"] is False
    assert target("t", 40.0, ">=", 50.0, "d")["pass"] is False
    assert target("t", 50.0, ">=", 50.0, "d")["pass"] is True


def test_a_missed_target_keeps_its_bound_and_a_met_one_has_none() -> None:
    assert target("t", 2.0, "<=", 1.5, "d", bound="decode is the floor")["bound"] == "decode is the floor"
    assert "bound" not in target("t", 1.0, "<=", 1.5, "d", bound="decode is the floor")


def test_a_figure_not_measured_neither_passes_nor_fails() -> None:
    assert target("t", None, "<=", 1.5, "d")["pass"] is None
    assert target("t", math.nan, ">=", 1.5, "d")["pass"] is None


def test_the_people_section_prints_each_box_count_against_the_classifier() -> None:
    from bench.report import render

    results = {
        "meta": {"machine": {"date_utc": "2026-12-06", "cpu": "cpu", "cores": 2, "torch": "2", "torch_threads": 2},
                 "mode": "full", "reps": 3},
        "people": {"runtime": "torchscript-fp32", "frame": "340x256, 32 frames", "classifier_runtime": "openvino-fp32",
                   "classifier_forward_ms": {"median": 1000.0}, "detector_ms": {"median": 800.0},
                   "keyframe_ms": {"1": {"median": 1200.0}, "20": {"median": 1500.0}},
                   "vs_classifier": {"1": 1.2, "20": 1.5}},
    }
    table = render(results)
    assert "3f. Person-level actions" in table and "person detector" in table
    assert "1.20x" in table and "1.50x" in table
    assert "CPU flags that decide precision: not recorded" in table  # a run from before flags were kept


def test_a_run_names_the_cpu_flags_that_decide_precision() -> None:
    from bench.report import markdown, render
    from bench.util import flags_text, machine

    assert flags_text(["avx2", "fma"]) == "has avx2 fma; lacks avx512f avx512_bf16 avx512_vnni avx_vnni amx_bf16 amx_int8"
    assert flags_text([]).startswith("has none of them; lacks avx2")
    here = machine()
    assert set(here["precision_flags"]) <= {"avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8"}
    results = {"meta": {"machine": {**here, "precision_flags": ["avx2", "avx512_bf16"]}, "mode": "full", "reps": 1}}
    assert "CPU flags that decide precision: has avx2 avx512_bf16; lacks fma" in render(results)
    assert "- CPU flags that decide precision: has avx2 avx512_bf16" in markdown(results, "t", "python -m bench")
def _latency_and_stages(worker_ms: float, inproc_ms: float) -> dict:
    return {
        "stages": {"clips": {"v.mp4": {"stages_ms": {"preprocess": {"median": inproc_ms}}}}},
        "http": {"latency": {"v.mp4": {"handler_ms": {"preprocess": {"median": worker_ms}}},
                             "other.mp4": {"handler_ms": {"preprocess": {"median": 99.0}}}}},
    }


def test_the_workers_preprocess_is_judged_beside_the_in_process_one() -> None:
    from bench.report import _preprocess_targets, preprocess_side_by_side

    results = _latency_and_stages(30.0, 7.5)
    assert preprocess_side_by_side(results) == {"v.mp4": (30.0, 7.5)}  # only videos measured both ways
    [slow] = _preprocess_targets(results)
    assert slow["name"] == "worker preprocess / in-process preprocess [v.mp4]"
    assert (slow["value"], slow["pass"]) == (4.0, False)
    [fast] = _preprocess_targets(_latency_and_stages(8.0, 7.5))
    assert fast["pass"] is True


def test_the_in_process_preprocess_taken_beside_the_worker_is_the_one_judged() -> None:
    """The latency section's own in-process figure (interleaved with the served requests) wins over
    section 1's, which older results fall back to."""
    from bench.report import preprocess_side_by_side

    results = _latency_and_stages(14.0, 7.0)
    results["http"]["latency"]["v.mp4"]["in_process_preprocess_ms"] = {"median": 13.5}
    results["http"]["latency"]["other.mp4"]["in_process_preprocess_ms"] = {"median": 98.0}
    assert preprocess_side_by_side(results) == {"v.mp4": (14.0, 13.5), "other.mp4": (99.0, 98.0)}


def test_the_int8_section_prints_its_agreement_beside_the_three_precisions() -> None:
    from bench import int8

    agreement = {"top1_agreement": 0.95, "top5_overlap": 0.9, "max_abs_probability_delta": 0.01,
                 "logit_correlation": 0.9991, "held_out_windows": 20, "held_out_videos": 5,
                 "calibration_windows": 10, "calibration_videos": 5, "kept_fp32": "head"}
    rows = {label: {"runtime": f"openvino-{label}", "forward_ms": {"median": ms}, "vs_fp32": ms / 400.0}
            for label, ms in (("fp32", 400.0), ("bf16", 400.0), ("int8", 200.0))}
    results = {"int8": {"rows": rows, "source": "x.pt", "agreement": agreement}}
    text = "\n".join(int8.render(results))
    [row] = [line.split() for line in text.splitlines() if line.split()[:2] == ["int8", "openvino-int8"]]
    assert row[1:] == ["openvino-int8", "200.0", "0.50x"], row
    assert "top-1 agreement 0.950" in text and "20 held-out windows of 5 videos" in text
    [speed] = int8.targets(results)
    assert (speed["value"], speed["pass"]) == (0.5, True)
    assert int8.targets({"int8": {"skipped": "no int8 model"}}) == []
    assert "skipped: no int8 model" in "\n".join(int8.render({"int8": {"skipped": "no int8 model"}}))


def test_the_int8_per_variant_table_prints_each_variant_its_ratios_and_what_random_agreement_means() -> None:
    from bench import int8

    def rows(fp32: float, int8_ms: float) -> dict:  # bf16 runs as fp32 (a CPU without native bf16)
        return {label: {"runtime": runtime, "forward_ms": {"median": ms}, "vs_fp32": ms / fp32, "vs_bf16": ms / fp32}
                for label, runtime, ms in (("fp32", "openvino-fp32", fp32), ("bf16", "openvino-fp32", fp32),
                                           ("int8", "openvino-int8", int8_ms))}

    agreement = {"top1_agreement": 1.0, "held_out_windows": 19}
    results = {"int8_variants": {
        "slowfast_r50": {"rows": rows(4000.0, 2000.0), "agreement": agreement, "quantize_s": 97.0, "frames": "32 x 2, alpha 4"},
        "slowfast_r101": {"rows": rows(8000.0, 7000.0), "agreement": agreement, "quantize_s": 190.4, "frames": "32 x 2, alpha 4"},
    }}
    lines = int8.render_variants(results)
    table = {line.split()[0]: line.split() for line in lines if line.strip().startswith("slowfast_")}
    # variant, frames x rate (5 words), fp32, bf16 (runs as), int8, int8/fp32, int8/bf16, agreement (3 words), quantize s
    assert table["slowfast_r50"][6:14] == ["4,000.0", "4,000.0", "(openvino-fp32)", "2,000.0", "0.50x", "0.50x", "1.000", "(19"]
    assert table["slowfast_r101"][10:12] == ["0.88x", "0.88x"] and table["slowfast_r101"][-1] == "190"
    assert "says nothing about trained weights" in "\n".join(lines)
    r50, r101 = int8.targets(results)
    assert (r50["name"], r50["value"], r50["pass"]) == ("int8 forward / fp32 forward [slowfast_r50, random weights]", 0.5, True)
    assert (r101["value"], r101["pass"]) == (0.875, False)
    skipped = {"int8_variants": {"skipped": "quick runs do not quantize"}}
    assert int8.targets(skipped) == [] and "skipped: quick runs do not quantize" in "\n".join(int8.render_variants(skipped))
    assert int8.render_variants({}) == []


def test_the_int8_per_variant_section_runs_only_when_named() -> None:
    import pytest

    from bench.__main__ import parse_args

    assert "int8_variants" not in parse_args([]).sections and "int8" in parse_args([]).sections
    assert "int8_variants" not in parse_args(["--quick"]).sections
    named = parse_args(["--sections", "int8_variants", "--int8-variants", "slowfast_r101"])
    assert (named.sections, named.int8_variants) == (["int8_variants"], ["slowfast_r101"])
    with pytest.raises(SystemExit):
        parse_args(["--int8-variants", "slowfast_r101"])  # names for a section not asked for
    with pytest.raises(SystemExit):
        parse_args(["--sections", "int8_variants", "--int8-variants", "slowfast_r999"])
