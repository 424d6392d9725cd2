"""TorchServe's Prometheus metrics API, read back: samples and sums over labels."""

from __future__ import annotations

import re
from typing import Dict, List, Tuple

SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> List[Tuple[str, Dict[str, str], float]]:
    """(name, labels, value) of every sample in Prometheus text exposition format."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line.strip())
        if match:
            name, labels, value = match.groups()
            samples.append((name, dict(LABEL.findall(labels or "")), float(value)))
    return samples


def value(samples: List[Tuple[str, Dict[str, str], float]], name: str, **labels: str) -> float:
    """Sum of ``name`` over the samples whose labels include ``labels`` (0 when absent)."""
    return sum(v for n, l, v in samples if n == name and all(l.get(k) == x for k, x in labels.items()))
