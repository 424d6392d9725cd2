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
    assert "3d. Person-level actions" in table and "person detector" in table
    assert "1.20x" in table and "1.50x" in table
