"""Run windows of sampled frames through the model in micro-batches; scores out, inputs untouched.

A view is one crop of one window. Windows arrive lazily (decoded as they are needed), their views
are packed into micro-batches across windows and requests, and each window's scores come out as
soon as its last view has run, so memory is bounded by the micro-batch, not by the video length.
A micro-batch that fails is run again window by window, so a failure (an input that breaks
preprocessing, a forward too large for the device) fails only the windows it belongs to; each
comes out as a ``WindowFailure`` in its place.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Callable, Hashable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch

from handler.contract import PreprocessContract, combine_views
from handler.runtime_base import Outputs
from handler.transforms import crop_and_normalize, crop_offsets, pack_pathways

# [slow (B,3,T/alpha,c,c), fast (B,3,T,c,c)] float -> each output (B, ...) float32 (a Runtime's infer)
Infer = Callable[[List[torch.Tensor]], Outputs]


@dataclass(frozen=True)
class WindowJob:
    """One window to score: ``frames`` (T, H, W, 3) uint8 on the model's device, ``crops`` 1 or 3."""

    key: Hashable
    frames: torch.Tensor
    crops: int


@dataclass(frozen=True)
class WindowScores:
    """A window's model outputs over its crops (``combine_outputs``).

    ``outputs``: each (N,) float32 (logits and probabilities (classes,), embedding (D,)); times
    are this window's share of the micro-batches it ran in, in ms.
    """

    key: Hashable
    outputs: Outputs
    views: int
    preprocess_ms: float
    inference_ms: float

    @property
    def probabilities(self) -> torch.Tensor:
        return self.outputs.probabilities

    @property
    def embedding(self) -> torch.Tensor:
        return self.outputs.embedding


@dataclass(frozen=True)
class WindowFailure:
    """A window that could not be scored: ``error`` is what its preprocessing or forward raised."""

    key: Hashable
    error: Exception


WindowResult = Union[WindowScores, WindowFailure]


@dataclass(eq=False)  # compared and hashed by identity: one per window
class _Pending:
    job: WindowJob
    views_left: int
    views: List[Outputs] = field(default_factory=list)  # one per view run, each output (N,)
    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    error: Optional[Exception] = None


_Views = Sequence[Tuple[_Pending, Tuple[int, int]]]


def _score(views: _Views, contract: PreprocessContract, infer: Infer) -> None:
    """Score the views of windows not failed yet; when views of several windows fail together, each
    window's views are run again alone, so a failure is recorded on the windows that meet it."""
    live = [(pending, offset) for pending, offset in views if pending.error is None]
    if not live:
        return
    try:
        _score_views(live, contract, infer)
        return
    except Exception as error:  # noqa: BLE001 (recorded on the window; the handler answers it)
        windows = list(dict.fromkeys(pending for pending, _ in live))
        if len(windows) == 1:
            windows[0].error = error
            return
    for window in windows:
        try:
            _score_views([(p, offset) for p, offset in live if p is window], contract, infer)
        except Exception as error:  # noqa: BLE001
            window.error = error


def view_pathways(views: Sequence[Tuple[torch.Tensor, Tuple[int, int]]], contract: PreprocessContract) -> List[torch.Tensor]:
    """The model's input for B views, each ``(frames (T,H,W,3) uint8, crop offset (y, x))``:
    ``[slow (B,3,T/alpha,c,c), fast (B,3,T,c,c)]`` float32, as the contract prescribes."""
    # Frames are RGB; a BGR model gets its channels flipped after normalizing with its own
    # (BGR-ordered) mean and std reversed into RGB order.
    bgr = contract.channel_order == "BGR"
    mean, std = (contract.mean[::-1], contract.std[::-1]) if bgr else (contract.mean, contract.std)
    # Each view is written into its row of the batch: no per-view tensors to concatenate.
    crop = contract.crop_size
    frames0 = views[0][0]
    fast = torch.empty((len(views), 3, frames0.shape[0], crop, crop), dtype=torch.float32, device=frames0.device)
    for row, (frames, offset) in enumerate(views):
        crop_and_normalize(frames, [offset], crop_size=crop, mean=mean, std=std, out=fast[row : row + 1])
    if bgr:
        fast = fast.flip(1)
    return pack_pathways(fast, contract.alpha)


def _score_views(views: _Views, contract: PreprocessContract, infer: Infer) -> None:
    started = time.perf_counter()
    pathways = view_pathways([(p.job.frames, offset) for p, offset in views], contract)
    prepared = time.perf_counter()
    outputs = infer(pathways)
    finished = time.perf_counter()
    share_pre = (prepared - started) * 1000 / len(views)
    share_inf = (finished - prepared) * 1000 / len(views)
    rows = [outputs.row(row) for row in range(len(views))]  # all or nothing: a failed batch is run again
    for row, (pending, _) in zip(rows, views):
        pending.views.append(row)
        pending.views_left -= 1
        pending.preprocess_ms += share_pre
        pending.inference_ms += share_inf


def run_windows(
    jobs: Iterable[WindowJob], contract: PreprocessContract, infer: Infer, micro_batch: int
) -> Iterator[WindowResult]:
    """Scores of each window (or its ``WindowFailure``), in the order the windows were given.

    ``jobs`` is consumed lazily: a window is pulled (and so decoded) only when the micro-batch
    being filled needs its views; the handler may make them ahead, in a thread, while the
    forwards run (``handler.prefetch``). An exception raised by ``jobs`` itself propagates.
    """
    if micro_batch < 1:
        raise ValueError("micro_batch must be >= 1")
    queue: List[Tuple[_Pending, Tuple[int, int]]] = []
    waiting: List[_Pending] = []

    def finished() -> Iterator[WindowResult]:
        while waiting and (waiting[0].views_left == 0 or waiting[0].error is not None):
            done = waiting.pop(0)
            if done.error is None:
                try:
                    outputs = combine_outputs(done.views, contract.activation)
                except Exception as error:  # noqa: BLE001
                    done.error = error
            if done.error is not None:
                yield WindowFailure(done.job.key, done.error)
                continue
            yield WindowScores(
                key=done.job.key, outputs=outputs,
                views=done.job.crops, preprocess_ms=done.preprocess_ms, inference_ms=done.inference_ms,
            )

    for job in jobs:
        pending = _Pending(job, views_left=job.crops)
        waiting.append(pending)
        try:
            _, height, width, _ = job.frames.shape
            offsets = crop_offsets(height, width, contract.crop_size, job.crops)
        except Exception as error:  # noqa: BLE001 (frames of a wrong shape fail their window only)
            pending.error = error
            offsets = []
        queue.extend((pending, offset) for offset in offsets)
        while len(queue) >= micro_batch:
            _score(queue[:micro_batch], contract, infer)
            del queue[:micro_batch]
        yield from finished()
    while queue:
        _score(queue[:micro_batch], contract, infer)
        del queue[:micro_batch]
    yield from finished()


def combine_outputs(views: Sequence[Outputs], activation: str) -> Outputs:
    """V views' (crops', windows') outputs, each (N,) float32 -> one ``Outputs`` of (N,):
    probabilities by the contract's rule (``combine_views``: mean for softmax, max for sigmoid),
    every other output averaged. By field name, so a new output needs nothing here."""
    combined = {}
    for output in fields(Outputs):
        stacked = torch.stack([getattr(view, output.name) for view in views])
        combined[output.name] = combine_views(stacked, activation) if output.name == "probabilities" else stacked.mean(0)
    return Outputs(**combined)


def mean_scores(scores: Sequence[WindowScores], activation: str = "softmax") -> Outputs:
    """Each output (N,) float32 over windows, combined as views are (``combine_outputs``: for
    softmax the mean over all views when windows have equal crops, for sigmoid the max)."""
    return combine_outputs([s.outputs for s in scores], activation)
