"""Every config value the docs state is the value the shipped config files hold (issue 9).

What counts as a statement, in README.md and docs/*.md (docs/kserve.md describes the KServe pod's
config: config.properties minus its local-only keys, plus deploy/kserve/config.properties; every
other page describes config.properties):

- a table row whose first cell names a config key in backticks, read in the column headed
  "Default" or "value": its first backticked text, or a size such as ``256 MiB``; "absent" means
  the key is not in the file. Cells in prose ("same listener as inference") state nothing checkable.
- an inline ``key=value`` code span, unless written right after "e.g." (an example of a change);
- a ``key=value`` line in a fenced code block, unless the block's info string says ``example``.

Only keys the described file sets are checked (``number_of_gpu=2`` in docs/gpu.md is an example of a
key the file leaves commented out).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from client.config import read_properties
from deploy.kserve.build import LOCAL_ONLY, OVERLAY
from handler.option_table import REQUEST_OPTIONS, RequestOption
from handler.serve_settings import ServeOptions
from harness.paths import REPO

ABSENT = object()
SIZE_UNITS = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def repo_config() -> Dict[str, str]:
    return read_properties(REPO / "config.properties")


def kserve_config() -> Dict[str, str]:
    merged = {k: v for k, v in repo_config().items() if k not in LOCAL_ONLY}
    merged.update(read_properties(OVERLAY))
    return merged


def described_config(doc: Path) -> Dict[str, str]:
    return kserve_config() if doc.name == "kserve.md" else repo_config()


@dataclass
class Claim:
    doc: str
    line: int
    key: str
    value: object  # str, or ABSENT

    def mismatch(self, config: Dict[str, str]) -> Optional[str]:
        actual = config.get(self.key, ABSENT)
        if actual == self.value:
            return None
        show = lambda v: "absent" if v is ABSENT else repr(v)  # noqa: E731
        return f"{self.doc}:{self.line}: {self.key} documented as {show(self.value)}, the file has {show(actual)}"


def _cells(line: str) -> List[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _cell_value(cell: str) -> object:
    if cell.lower().startswith("absent"):
        return ABSENT
    quoted = re.findall(r"`([^`]*)`", cell)
    if quoted:
        return quoted[0]
    size = re.fullmatch(r"(\d+) (KiB|MiB|GiB)", cell)
    return str(int(size.group(1)) * SIZE_UNITS[size.group(2)]) if size else None


def claims(doc: Path, keys: set) -> List[Claim]:
    found: List[Claim] = []
    name = str(doc.relative_to(REPO)) if doc.is_relative_to(REPO) else doc.name
    lines = doc.read_text(encoding="utf-8").splitlines()
    fence: Optional[str] = None  # the info string of the open fenced block
    value_column: Optional[int] = None  # column of "Default"/"value" in the table being read
    for number, line in enumerate(lines, 1):
        if line.lstrip().startswith("```"):
            fence = None if fence is not None else line.lstrip()[3:].strip()
            continue
        if fence is not None:
            assignment = re.fullmatch(r"\s*([a-z_]+)=(.*)", line)
            if assignment and assignment.group(1) in keys and "example" not in fence:
                found.append(Claim(name, number, assignment.group(1), assignment.group(2).strip()))
            continue
        if line.startswith("|"):
            cells = _cells(line)
            following = lines[number] if number < len(lines) else ""
            if re.fullmatch(r"\|?\s*:?-{3,}.*", following.strip()):  # a header row
                headers = [c.lower() for c in cells]
                value_column = next((i for i, h in enumerate(headers) if h in ("default", "value")), None)
            elif value_column is not None and not set(line) <= set("|-: ") and len(cells) > value_column:
                value = _cell_value(cells[value_column])
                for key in re.findall(r"`([a-z_]+)`", cells[0]):
                    if key in keys and value is not None:
                        found.append(Claim(name, number, key, value))
        else:
            value_column = None
        for span in re.finditer(r"`([a-z_]+)=([^`\s]*)`", line):
            if span.group(1) in keys and not line[: span.start()].endswith("e.g. "):
                found.append(Claim(name, number, span.group(1), span.group(2)))
    return found


DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_documented_config_values_are_the_shipped_ones(doc: Path) -> None:
    config = described_config(doc)
    problems = [m for c in claims(doc, set(config)) if (m := c.mismatch(config))]
    assert problems == [], "\n".join(problems)


def test_the_security_table_is_read() -> None:
    """The extractor sees what docs/operations.md states: a parser that reads nothing would pass."""
    doc = REPO / "docs" / "operations.md"
    stated = {c.key for c in claims(doc, set(repo_config()))}
    assert {
        "inference_address", "management_address", "metrics_address", "grpc_inference_address",
        "grpc_management_address", "disable_token_authorization", "enable_envvars_config",
        "enable_model_api", "allowed_urls", "max_request_size", "max_response_size", "metrics_mode",
    } <= stated


def test_a_wrong_statement_is_caught(tmp_path: Path) -> None:
    config = repo_config()
    doc = tmp_path / "page.md"
    doc.write_text(
        "| Setting | Default | Why |\n|---|---|---|\n"
        "| `allowed_urls` | `^file://.*model_store/.*\\\\.mar$` | wrong |\n"
        "| `enable_envvars_config` | absent (`false`) | wrong: the file sets it |\n"
        "| `max_request_size` | 6 MiB | wrong |\n\n"
        "Tokens stay on (`disable_token_authorization=true`); set e.g. `token_expiration_min=480` to change.\n\n"
        "```properties\nmetrics_mode=log\n```\n"
    )
    found = claims(doc, set(config))
    bad = sorted(c.key for c in found if c.mismatch(config))
    assert bad == ["allowed_urls", "disable_token_authorization", "enable_envvars_config", "max_request_size", "metrics_mode"]
    assert "token_expiration_min" not in {c.key for c in found}



# -- the README's table of request options: the handler's own table (handler/option_table.py) ----


def stated_values(option: RequestOption, num_classes: int) -> str:
    """How the README's "Values (default)" cell starts for ``option``, from its declaration."""
    shown = lambda value: f"`{value}`" if isinstance(value, str) else str(value).lower()  # noqa: E731
    if option.value_type in ("int", "float"):
        highs = {"num_classes": num_classes, "max_clips": ServeOptions().max_clips}
        values = f"{option.low:g}..{highs.get(option.high, option.high):g}"
    elif option.value_type == "choice":
        values = ", ".join(shown(choice) for choice in option.choices)
    elif option.value_type == "bool":
        values = "true/false"
    else:
        values = "seconds"
    return values if option.default is None else f"{values} ({shown(option.default)})"


def readme_option_rows(text: str) -> Dict[str, str]:
    """Option name -> its "Values (default)" cell, from the table headed ``| Option | Values (default) |``."""
    rows: Dict[str, str] = {}
    inside = False
    for line in text.splitlines():
        cells = _cells(line) if line.startswith("|") else []
        if cells[:2] == ["Option", "Values (default)"]:
            inside = True
        elif inside and not cells:
            break
        elif inside and not set(cells[0]) <= set("-: "):
            for name in re.findall(r"`([a-z_]+)`", cells[0]):
                rows[name] = cells[1]
    return rows


def test_the_readme_states_every_request_option_as_declared() -> None:
    from export.reference import default_contract

    rows = readme_option_rows((REPO / "README.md").read_text())
    assert sorted(rows) == sorted(option.name for option in REQUEST_OPTIONS)
    num_classes = default_contract().num_classes
    wrong = [f"{option.name}: README says {rows[option.name]!r}, declared {stated_values(option, num_classes)!r}"
             for option in REQUEST_OPTIONS if not rows[option.name].startswith(stated_values(option, num_classes))]
    assert wrong == [], "\n".join(wrong)


def test_a_wrong_option_row_is_caught() -> None:
    table = "| Option | Values (default) | What |\n| --- | --- | --- |\n| `topk` | 1..400 (10) | labels |\n\nafter\n"
    rows = readme_option_rows(table)
    assert rows == {"topk": "1..400 (10)"}
    assert not rows["topk"].startswith(stated_values(REQUEST_OPTIONS[0], 400))
