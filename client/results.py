"""The results file: one JSON line per input, written as each finishes and flushed, so a crash
loses nothing finished; ``--resume`` reads it back; embeddings go to a ``.npy`` beside it.

A line: ``{"path", "status": "ok", "answer", "elapsed_ms", "attempts"}`` or
``{"path", "status": "failed", "error": {"reason", "message", "http_status"}, "elapsed_ms", "attempts"}``.
An answered line with an embedding also carries ``embedding_row``: its row in the ``.npy``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Dict, List, Optional

import numpy as np

from client.transport import Answer, Failure, Outcome


def input_key(path: str) -> str:
    """How a line is matched to an input on resume: its absolute path."""
    return os.path.abspath(path)


def read_lines(path: Path) -> List[Dict[str, Any]]:
    """The valid lines of a results file; a line cut short by a crash is ignored."""
    lines = []
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return lines
    for raw in text.splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict) and isinstance(line.get("path"), str):
            lines.append(line)
    return lines


def answered(lines: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The answered lines, first one per input, in file order."""
    seen, kept = set(), []
    for line in lines:
        key = input_key(line["path"])
        if line.get("status") == "ok" and key not in seen:
            seen.add(key)
            kept.append(line)
    return kept


def embedding_of(answer: Dict[str, Any]) -> Optional[List[float]]:
    embedding = answer.get("embedding")
    return embedding.get("values") if isinstance(embedding, dict) else None


def outcome_line(path: str, outcome: Outcome, elapsed_s: float) -> Dict[str, Any]:
    line: Dict[str, Any] = {"path": path}
    if isinstance(outcome, Answer):
        line.update(status="ok", answer=outcome.body)
    else:
        assert isinstance(outcome, Failure)
        line.update(status="failed",
                    error={"reason": outcome.reason, "message": outcome.message, "http_status": outcome.status})
    line.update(elapsed_ms=round(elapsed_s * 1000, 1), attempts=outcome.attempts)
    return line


class ResultsWriter:
    """Appends lines to ``path`` (or writes them to ``stream``), flushing each.

    ``resume=True`` keeps the answered lines already there (the failed ones are dropped: those
    inputs are sent again) and rewrites the file with them atomically before appending.
    """

    def __init__(self, path: Optional[Path], resume: bool = False, stream: Optional[IO[str]] = None) -> None:
        self.path = path
        self.previous: List[Dict[str, Any]] = answered(read_lines(path)) if (path and resume) else []
        self.rows = 0
        for line in self.previous:  # renumbered: rows stay 0..n-1 in file order
            line.pop("embedding_row", None)
            self._number(line)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._rewrite(path, self.previous)
            self.handle: IO[str] = open(path, "a", encoding="utf-8")
        else:
            self.handle = stream  # type: ignore[assignment]

    @staticmethod
    def _rewrite(path: Path, lines: List[Dict[str, Any]]) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for line in lines:
                handle.write(json.dumps(line) + "\n")
        os.replace(tmp, path)

    def done_keys(self) -> set:
        return {input_key(line["path"]) for line in self.previous}

    def _number(self, line: Dict[str, Any]) -> None:
        if line.get("status") == "ok" and embedding_of(line["answer"]) is not None:
            line["embedding_row"] = self.rows
            self.rows += 1

    def write(self, line: Dict[str, Any]) -> None:
        self._number(line)
        self.handle.write(json.dumps(line) + "\n")
        self.handle.flush()

    def close(self) -> None:
        if self.path is not None:
            self.handle.close()


def embeddings_path(results: Path) -> Path:
    """``results.jsonl`` -> ``results.npy``."""
    return results.with_suffix(".npy")


def write_embeddings(results: Path, target: Path) -> int:
    """Write the embeddings of ``results``' answered lines to ``target``: float32 (rows, dim), in file
    order, which is each line's ``embedding_row``; returns the number of rows (nothing written when 0)."""
    rows = [embedding_of(line["answer"]) for line in answered(read_lines(results)) if "embedding_row" in line]
    if not rows:
        return 0
    save_npy(target, np.asarray(rows, dtype=np.float32))
    return len(rows)


def save_npy(target: Path, matrix: np.ndarray) -> None:
    """np.save through a temporary file, so a reader never sees half an array."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, matrix)
    os.replace(tmp, target)
