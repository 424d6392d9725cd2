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
