"""Send many videos concurrently: each input once, answered or failed with its reason, one results
line as each finishes.

Concurrency defaults to what the server can work on at once (the model's ``batchSize`` times its
workers, from the management API): fewer leaves batches half empty, more only queues.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Callable, List, Mapping, Optional, Tuple

import requests

from client.progress import Progress, Tally
from client.results import ResultsWriter, input_key, outcome_line
from client.transport import Failure, Outcome, Transport
from client.window_cut import send_video

FALLBACK_CONCURRENCY = 4  # model-config.yaml's batchSize with one worker


def server_concurrency(transport: Transport, note: Callable[[str], None]) -> int:
    """batchSize x workers as the management API reports them, else FALLBACK_CONCURRENCY; says which in ``note``."""
    if not transport.endpoint.management_url:  # KServe: no TorchServe management API to ask
        note(f"sending {FALLBACK_CONCURRENCY} at a time ({transport.endpoint.protocol} has no management API "
             f"to ask for the batch size; --concurrency to choose)")
        return FALLBACK_CONCURRENCY
    try:
        model = transport.model_description()
        workers = len(model.get("workers") or []) or int(model.get("minWorkers") or 1)
        batch = int(model.get("batchSize") or 1)
    except (requests.RequestException, ValueError, IndexError, KeyError, TypeError, AttributeError) as exc:
        note(f"note: cannot ask {transport.endpoint.management_url} for the model's batch size and workers "
             f"({exc.__class__.__name__}); sending {FALLBACK_CONCURRENCY} at a time (--concurrency to choose)")
        return FALLBACK_CONCURRENCY
    note(f"sending {batch * workers} at a time (batchSize {batch} x {workers} worker(s))")
    return max(1, batch * workers)


def send_file(transport: Transport, path: Path, fields: Mapping[str, str],
              whole_file: bool = False) -> Tuple[Outcome, float]:
    """One input: read it, send it (the part its windows need unless ``whole_file``: client/window_cut.py;
    with retries); the outcome and the seconds it took."""
    started = time.monotonic()
    try:
        data = path.read_bytes()
    except OSError as exc:
        return Failure("unreadable", f"cannot read {path}: {exc.strerror or exc}"), time.monotonic() - started
    return send_video(transport, data, fields, whole_file=whole_file)[0], time.monotonic() - started


def pending(inputs: List[Path], writer: ResultsWriter) -> List[Path]:
    done = writer.done_keys()
    return [path for path in inputs if input_key(str(path)) not in done]


def run_bulk(
    inputs: List[Path], transport: Transport, fields: Mapping[str, str], writer: ResultsWriter,
    concurrency: int, progress_factory: Callable[[Tally], Progress], whole_file: bool = False,
) -> Tally:
    """Send every input not already in ``writer`` (resume), ``concurrency`` at a time.

    Worker threads are daemons: on Ctrl-C the caller returns at once, and the lines written so far
    are complete (each is flushed as it is written, by this thread only).
    """
    todo = pending(inputs, writer)
    tally = Tally(total=len(todo), skipped=len(inputs) - len(todo))
    progress = progress_factory(tally)
    transport.on_retry = lambda failure, delay: progress.write(
        f"note: {failure.describe()[:200]}; resending in {delay:.1f} s")
    work: "queue.Queue[Optional[Path]]" = queue.Queue()
    results: "queue.Queue[Tuple[Path, Outcome, float]]" = queue.Queue()
    for path in todo:
        work.put(path)

    def worker() -> None:
        while True:
            try:
                path = work.get_nowait()
            except queue.Empty:
                return
            outcome, seconds = send_file(transport, path, fields, whole_file)
            results.put((path, outcome, seconds))

    for _ in range(max(1, min(concurrency, len(todo)))):
        threading.Thread(target=worker, daemon=True).start()
    try:
        for _ in todo:
            path, outcome, seconds = results.get()
            line = outcome_line(str(path), outcome, seconds)
            writer.write(line)
            tally.record(line["status"] == "ok", line["elapsed_ms"], line.get("error", {}).get("reason", ""))
            progress.update()
    finally:
        progress.close()
    return tally

