"""A timeline of one video: a progress bar fed by the streamed windows, then a compact table, and
on request a CSV (one row per window and rank) and a chart of the top classes over time.

The streamed answer is one JSON line per window, ``{"window": {"index", "of", "start", "end",
"predictions"}}``, then the full answer (or an error object, the HTTP status being 200 by then).
"""

from __future__ import annotations

import csv
import sys
import textwrap
from pathlib import Path
from typing import IO, Any, Dict, Iterable, List, Optional, Sequence

from tqdm import tqdm

from client.endpoint import ClientError

# A chart asks for this many labels per window, so a plotted class's line rarely breaks where it
# drops out of the window's top-k; the table and CSV keep the top-k asked for.
PLOT_TOPK = 20
PLOT_SIZE_IN = (10.0, 4.8)
PLOT_DPI = 100  # with PLOT_SIZE_IN: a 1000 x 480 pixel PNG
CSV_COLUMNS = ("start", "end", "rank", "label", "index", "probability")


def follow_stream(lines: Iterable[Dict[str, Any]], stream: Optional[IO[str]] = None,
                  tty: Optional[bool] = None) -> Dict[str, Any]:
    """Consume a streamed timeline: advance a bar (terminal) or print a line per window (otherwise)
    as each window arrives; return the final answer.
    Raises:
        ClientError: the server's error line, or a stream that ended without a final answer.
    """
    stream = stream or sys.stderr
    tty = stream.isatty() if tty is None else tty
    bar: Optional[tqdm] = None
    final: Optional[Dict[str, Any]] = None
    try:
        for line in lines:
            window = line.get("window")
            if window is None:
                final = line
                continue
            if tty:
                if bar is None:
                    bar = tqdm(total=window["of"], unit="window", file=stream, dynamic_ncols=True)
                bar.update(1)
            else:
                top = (window.get("predictions") or [{}])[0]
                print(f"window {window['index'] + 1}/{window['of']}  {window['start']:.2f}-{window['end']:.2f} s  "
                      f"{top.get('label', '')} {top.get('probability', 0):.4f}", file=stream, flush=True)
    finally:
        if bar is not None:
            bar.close()
    return stream_end(final, "timeline")


def stream_end(final: Optional[Dict[str, Any]], key: str) -> Dict[str, Any]:
    """A streamed answer's last line, when it is the answer (it holds ``key``).
    Raises:
        ClientError: no last line, or the server's error object (the status was 200 by then).
    """
    if final is None:
        raise ClientError("the streamed answer ended before its final line")
    if key not in final:
        reason = final.get("reason") or final.get("type") or "error"
        raise ClientError(f"the server failed after streaming began: {reason}: {final.get('message', final)}")
    return final


def format_timeline(answer: Dict[str, Any]) -> str:
    """time | top label | probability, one row per window."""
    entries = answer["timeline"]
    tops = [(e.get("predictions") or [{"label": "-", "probability": 0.0}])[0] for e in entries]
    width = max([len("top label")] + [len(str(t["label"])) for t in tops])
    lines = [f"{'time (s)':>15}  {'top label':<{width}}  {'prob':>6}", f"{'-' * 15}  {'-' * width}  {'-' * 6}"]
    for entry, top in zip(entries, tops):
        span = f"{entry['start']:.2f}-{entry['end']:.2f}"
        lines.append(f"{span:>15}  {str(top['label']):<{width}}  {top['probability']:>6.4f}")
    overall = answer.get("predictions") or []
    if overall:
        lines.append(f"over the {len(entries)} windows: {overall[0]['label']} {overall[0]['probability']:.4f}")
    return "\n".join(lines)


def timeline_rows(answer: Dict[str, Any]) -> List[Dict[str, Any]]:
    """One row per window and rank: start, end, rank (1 = top), label, index, probability."""
    return [{"start": e["start"], "end": e["end"], "rank": rank, "label": p["label"], "index": p["index"],
             "probability": p["probability"]}
            for e in answer["timeline"] for rank, p in enumerate(e.get("predictions") or [], 1)]


def write_csv(answer: Dict[str, Any], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in timeline_rows(answer):
            writer.writerow({**row, "probability": repr(float(row["probability"]))})


def top_classes(answer: Dict[str, Any], count: int) -> List[str]:
    """The ``count`` labels of the whole-file answer (the mean over windows), best first."""
    labels = [p["label"] for p in answer.get("predictions") or []]
    if not labels:  # no file-level answer: the labels that are top-1 most often
        tops = [e["predictions"][0]["label"] for e in answer["timeline"] if e.get("predictions")]
        labels = sorted(set(tops), key=lambda label: (-tops.count(label), label))
    return labels[:count]


def plot_timeline(answer: Dict[str, Any], path: Path, title: str = "", classes: int = 5,
                  note: str = "") -> None:
    """A PNG (PLOT_SIZE_IN at PLOT_DPI) of the top ``classes`` labels' probability per window over
    time, ``note`` as its footer (see ``timeline_figure``)."""
    import matplotlib.pyplot as plt

    fig = timeline_figure(answer, title, classes, note)
    try:
        fig.savefig(path, dpi=PLOT_DPI)
    finally:
        plt.close(fig)


def timeline_figure(answer: Dict[str, Any], title: str = "", classes: int = 5, note: str = ""):
    """The chart as a matplotlib Figure (the caller closes it).

    Each window is drawn at its centre; a label outside a window's top-k has no point there (a gap),
    since the answer does not carry its probability. ``note`` is wrapped to the figure's width, and
    the bottom margin grows by its extra lines, so a long footer (a checkpoint's name, the reason
    weights are random) stays inside the image and below the axis label.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    entries = answer["timeline"]
    if not entries:
        raise ClientError("the timeline has no windows to plot")
    centres = [(e["start"] + e["end"]) / 2 for e in entries]
    fig, ax = plt.subplots(figsize=PLOT_SIZE_IN, dpi=PLOT_DPI)
    for label in top_classes(answer, classes):
        values = [next((p["probability"] for p in e.get("predictions") or [] if p["label"] == label), float("nan"))
                  for e in entries]
        ax.plot(centres, values, marker="o", markersize=4, linewidth=1.8, label=label)
    ax.set_xlim(entries[0]["start"], entries[-1]["end"])
    ax.set_ylim(0, ax.get_ylim()[1] * 1.1)
    ax.set_xlabel("time in the video (s); each point is a window, at its centre")
    ax.set_ylabel("probability")
    ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize=11)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False, title="top classes")
    lines = _footer(fig, note) if note else 1
    fig.subplots_adjust(left=0.09, right=0.76, top=0.92, bottom=0.16 + FOOTER_LINE * (lines - 1))
    return fig


FOOTER_MARGIN = 0.01  # of the figure's width and height, around the footer
FOOTER_LINE = 0.03  # of the figure's height: one 8 pt line at PLOT_DPI, with its spacing


def _footer(fig: Any, note: str) -> int:
    """Put ``note`` at the figure's bottom left, wrapped at word boundaries until it fits the
    figure's width (measured by the renderer); returns its number of lines."""
    text = fig.text(FOOTER_MARGIN, FOOTER_MARGIN, note, fontsize=8, color="0.35", va="bottom")
    renderer = fig.canvas.get_renderer()
    room = fig.bbox.width * (1 - 2 * FOOTER_MARGIN)
    columns = len(note)
    while text.get_window_extent(renderer).width > room and columns > 10:
        columns = min(columns - 1, int(columns * room / text.get_window_extent(renderer).width))
        text.set_text(textwrap.fill(note, columns, break_long_words=True))
    return text.get_text().count("\n") + 1


def keep_top(answer: Dict[str, Any], k: int) -> Dict[str, Any]:
    """The answer with at most ``k`` labels in its predictions and in each window's."""
    trimmed = {**answer, "predictions": (answer.get("predictions") or [])[:k]}
    trimmed["timeline"] = [{**e, "predictions": e["predictions"][:k]} if "predictions" in e else e
                           for e in answer["timeline"]]
    if "predictions" not in answer:
        del trimmed["predictions"]
    return trimmed


def window_embeddings(answer: Dict[str, Any]) -> Sequence[Sequence[float]]:
    """The per-window embeddings of a timeline answered with output=embedding/both (rows = windows)."""
    return [e["embedding"] for e in answer["timeline"] if "embedding" in e]
