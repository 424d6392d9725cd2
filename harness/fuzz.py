"""A mutation fuzzer over decoding: hostile variations of real videos through the real handler.

Each input is a real video (``../shared/videos``, plus synthesized MKV/TS/AVI/WebM files so the
fuzzer also runs without the corpus) changed by one or more mutations: bit flips, truncations,
edits of container box/element size fields (MP4 atoms, Matroska EBML elements, RIFF chunks),
splices of two files, and repeated chunks. Each goes through ``SlowFastHandler.handle`` in this
process (the in-process harness: parse -> plan -> decode -> run -> render, as a worker runs it),
with the served preprocessing contract and a model that only pools its input, so the time goes to
decoding, which is what is fuzzed.

What every input must end in (``Outcome.failure`` says which was broken):
- a 200, or a 4xx JSON error with a ``reason`` (never a 5xx, never an exception out of handle);
- within the decode budget (``max_decode_seconds`` plus ``TIME_SLACK_S`` for everything else);
- a peak resident memory no more than ``PEAK_MEMORY_LIMIT_MB`` above the process's before it.

``python -m harness.fuzz --inputs 1000 --seed 1`` (``make fuzz N=1000``) prints the outcomes by
class and saves every failing input to ``tests/fuzz_regressions/`` (replayed by the default suite).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import os
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from harness.memory import peak_rss_mb, reset_peak, rss_mb
from harness.paths import REPO, SHARED_VIDEOS

REGRESSIONS = REPO / "tests" / "fuzz_regressions"
# Peak RSS an input may add on top of the process's RSS before it. A window of the served contract
# is 32 x 3 x 256 x 256 float32 (25 MiB) per crop; decoded frames are bounded by max_frame_pixels.
PEAK_MEMORY_LIMIT_MB = 768
# Time beyond the decode budget an input may take: probing, preprocessing, the pooling forward.
TIME_SLACK_S = 10.0
# Decode budget for fuzzing (s): the served default is 30 s; a smaller one finds slow paths sooner.
FUZZ_DECODE_SECONDS = 10.0

# Four-character codes of MP4/MOV atoms, RIFF (AVI) chunks, and Matroska/WebM element IDs whose
# size fields the size mutation edits.
MP4_ATOMS = (b"ftyp", b"moov", b"mvhd", b"trak", b"tkhd", b"mdia", b"mdhd", b"minf", b"stbl", b"stsd",
             b"stts", b"stss", b"stsc", b"stsz", b"stco", b"co64", b"ctts", b"mdat", b"edts", b"elst",
             b"avcC", b"hvcC", b"udta", b"meta", b"moof", b"traf", b"trun")
RIFF_CHUNKS = (b"RIFF", b"LIST", b"avih", b"strh", b"strf", b"movi", b"idx1", b"00dc", b"00db")
EBML_IDS = (bytes.fromhex("1A45DFA3"), bytes.fromhex("18538067"), bytes.fromhex("1F43B675"),
            bytes.fromhex("1654AE6B"), bytes.fromhex("AE"), bytes.fromhex("A3"), bytes.fromhex("A0"),
            bytes.fromhex("1C53BB6B"), bytes.fromhex("114D9B74"))
MAX_INPUT_BYTES = 8 * 2**20  # repeated chunks never grow an input past this


# -- the corpus ------------------------------------------------------------------------------------


def corpus(videos: Path = SHARED_VIDEOS) -> Dict[str, bytes]:
    """Seed files by name: every video of ``videos`` (when present) and a few synthesized ones."""
    from harness.synth import make_video

    seeds: Dict[str, bytes] = {}
    if videos.is_dir():
        for path in sorted(videos.iterdir()):
            if path.suffix != ".tsv" and path.is_file():
                seeds[path.name] = path.read_bytes()
    fast = {"preset": "ultrafast"}
    seeds["synth.mkv"] = make_video(frames=24, width=96, height=64, container="matroska", options=fast)
    seeds["synth.ts"] = make_video(frames=24, width=96, height=64, container="mpegts", options=fast)
    seeds["synth.avi"] = make_video(frames=24, width=96, height=64, container="avi", codec="mpeg4")
    seeds["synth.webm"] = make_video(frames=12, width=96, height=64, container="webm", codec="libvpx")
    return seeds


# -- mutations -------------------------------------------------------------------------------------

Mutation = Callable[[random.Random, bytes, Sequence[bytes]], bytes]


def flip_bits(rng: random.Random, data: bytes, _others: Sequence[bytes]) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice((1, 4, 16, 64))):
        position = rng.randrange(len(out))
        out[position] ^= 1 << rng.randrange(8)
    return bytes(out)


def truncate(rng: random.Random, data: bytes, _others: Sequence[bytes]) -> bytes:
    cut = rng.choice((rng.randrange(1, 64), rng.randrange(len(data)), len(data) - rng.randrange(1, 4096)))
    return data[:max(1, min(cut, len(data) - 1))]


def _size_positions(data: bytes) -> List[Tuple[int, int]]:
    """(offset, length) of size fields next to the known atom/chunk/element tags in ``data``."""
    found: List[Tuple[int, int]] = []
    for tag in MP4_ATOMS:  # [size:4][type:4]
        start = data.find(tag, 4)
        while start != -1 and len(found) < 512:
            found.append((start - 4, 4))
            start = data.find(tag, start + 1)
    for tag in RIFF_CHUNKS:  # [id:4][size:4, little-endian]
        start = data.find(tag)
        while start != -1 and start + 8 <= len(data) and len(found) < 1024:
            found.append((start + 4, 4))
            start = data.find(tag, start + 1)
    for tag in EBML_IDS:  # [id][size: EBML varint, 1-8 bytes]
        start = data.find(tag)
        while start != -1 and start + len(tag) + 1 <= len(data) and len(found) < 1536:
            found.append((start + len(tag), min(8, len(data) - start - len(tag))))
            start = data.find(tag, start + 1)
    return found


def edit_size_field(rng: random.Random, data: bytes, others: Sequence[bytes]) -> bytes:
    positions = _size_positions(data)
    if not positions:
        return flip_bits(rng, data, others)
    offset, length = rng.choice(positions)
    out = bytearray(data)
    value = rng.choice((b"\x00" * length, b"\xff" * length, b"\x00" * (length - 1) + b"\x01",
                        b"\x7f" + b"\xff" * (length - 1), bytes(rng.randrange(256) for _ in range(length))))
    if rng.random() < 0.3:  # off by a little: the usual shape of a corrupted length
        number = int.from_bytes(data[offset:offset + length], "big") + rng.choice((-16, -1, 1, 8, 4096))
        value = (number % (1 << (8 * length))).to_bytes(length, "big")
    out[offset:offset + length] = value
    return bytes(out)


def splice(rng: random.Random, data: bytes, others: Sequence[bytes]) -> bytes:
    other = rng.choice(others)
    return data[:rng.randrange(1, max(2, len(data)))] + other[rng.randrange(len(other)):]


def repeat_chunk(rng: random.Random, data: bytes, _others: Sequence[bytes]) -> bytes:
    start = rng.randrange(len(data))
    chunk = data[start:start + rng.choice((16, 512, 8192, 65536))]
    times = rng.choice((2, 8, 64))
    times = max(1, min(times, (MAX_INPUT_BYTES - len(data)) // max(1, len(chunk))))
    return data[:start] + chunk * times + data[start:]


MUTATIONS: Dict[str, Mutation] = {
    "bit_flips": flip_bits, "truncation": truncate, "size_field": edit_size_field,
    "splice": splice, "repeated_chunk": repeat_chunk,
}


@dataclasses.dataclass(frozen=True)
class FuzzInput:
    seed_name: str
    mutations: Tuple[str, ...]
    data: bytes

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()[:16]


def inputs(seeds: Dict[str, bytes], count: int, seed: int) -> Iterator[FuzzInput]:
    """``count`` mutated inputs, the same for the same ``seeds`` and ``seed``."""
    rng = random.Random(seed)
    names = sorted(seeds)
    for _ in range(count):
        name = rng.choice(names)
        data = seeds[name]
        applied = []
        for _ in range(rng.choice((1, 1, 2, 3))):
            if len(data) < 2:
                break
            mutation = rng.choice(sorted(MUTATIONS))
            data = MUTATIONS[mutation](rng, data, [seeds[n] for n in names]) or data[:1]
            applied.append(mutation)
        yield FuzzInput(name, tuple(applied), data)


# -- the target ------------------------------------------------------------------------------------


class PoolingModel(torch.nn.Module):
    """The served model's interface at no cost: pools each pathway, (logits (B, classes), embedding (B, D))."""

    def __init__(self, classes: int, embedding: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.lift = torch.nn.Parameter(torch.randn(6, embedding, generator=generator))
        self.proj = torch.nn.Parameter(torch.randn(embedding, classes, generator=generator) / embedding)

    @torch.jit.export
    def forward_with_embedding(self, x: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        pooled = torch.cat([x[0].mean((2, 3, 4)), x[1].mean((2, 3, 4))], 1)
        feature = pooled @ self.lift
        return feature @ self.proj, feature

    def forward(self, x: List[torch.Tensor]) -> torch.Tensor:
        return self.forward_with_embedding(x)[0]


def target_model(directory: Path) -> Path:
    """The default variant's contract (the served preprocessing) over ``PoolingModel``; the .pt path."""
    from export.reference import default_contract
    from export.save import save_with_contract

    contract = dataclasses.replace(default_contract(), weights="fuzz target (pools its input)")
    path = directory / f"{contract.model_name}.pt"
    save_with_contract(torch.jit.script(PoolingModel(contract.num_classes, contract.embedding_size)), contract, path)
    return path


def target_handler(directory: Path):
    """The real handler over ``target_model``: TorchScript, no warm-up, the fuzzing decode budget."""
    from harness.inproc import InProcessHandler

    directory.mkdir(parents=True, exist_ok=True)
    settings = {"cpu_runtime": "torchscript", "warmup": False, "max_decode_seconds": FUZZ_DECODE_SECONDS}
    return InProcessHandler(target_model(directory), handler=settings)


@dataclasses.dataclass(frozen=True)
class Outcome:
    status: int
    reason: str
    seconds: float
    peak_mb: float
    failure: Optional[str]  # None when every property held

    @property
    def kind(self) -> str:
        return f"{self.status} {self.reason}"


def run_one(handler, data: bytes) -> Outcome:
    """One input through ``handler.handler.handle``; checks the three properties."""
    pid = os.getpid()
    before = rss_mb(pid) or 0.0
    reset_peak(pid)
    context = handler.context
    context.start_batch([{}])
    started = time.perf_counter()
    try:
        response = handler.handler.handle([{"body": bytearray(data)}], context)[0]
    except Exception as exc:  # noqa: BLE001 - an escape is the failure being looked for
        return Outcome(0, type(exc).__name__, time.perf_counter() - started, 0.0, f"handle raised {exc!r}")
    seconds = time.perf_counter() - started
    peak = max(0.0, (peak_rss_mb(pid) or before) - before)
    status = context.statuses.get(0, (200, ""))[0]
    reason = "ok" if status == 200 else str(response.get("reason", "?")) if isinstance(response, dict) else "?"
    failure = None
    if status >= 500:
        failure = f"answered {status}: {response}"
    elif status != 200 and not (isinstance(response, dict) and response.get("reason") and response.get("message")):
        failure = f"answered {status} without a JSON reason and message: {response!r}"[:500]
    elif seconds > FUZZ_DECODE_SECONDS + TIME_SLACK_S:
        failure = f"took {seconds:.1f} s (budget {FUZZ_DECODE_SECONDS} s + {TIME_SLACK_S} s)"
    elif peak > PEAK_MEMORY_LIMIT_MB:
        failure = f"peak memory grew {peak:.0f} MiB (limit {PEAK_MEMORY_LIMIT_MB} MiB)"
    return Outcome(status, reason, seconds, peak, failure)


def save_regression(item: FuzzInput, outcome: Outcome, directory: Path = REGRESSIONS) -> Path:
    """Keep a failing input for the regression test: ``<digest>.bin`` and a line of why."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{item.digest}.bin"
    path.write_bytes(item.data)
    (directory / f"{item.digest}.txt").write_text(
        f"from {item.seed_name} by {'+'.join(item.mutations)}: {outcome.failure}\n")
    return path


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=200, help="how many mutated inputs (default 200)")
    parser.add_argument("--seed", type=int, default=1, help="the run's seed: same seed, same inputs")
    parser.add_argument("--videos", type=Path, default=SHARED_VIDEOS, help="seed corpus (default ../shared/videos)")
    parser.add_argument("--workdir", type=Path, default=REPO / "build" / "fuzz", help="where the target model is written")
    parser.add_argument("--no-save", action="store_true", help="do not write failing inputs to tests/fuzz_regressions")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch 2.14: every TorchScript call
    handler = target_handler(args.workdir)
    seeds = corpus(args.videos)
    print(f"fuzzing the handler's decoding: {args.inputs} inputs from {len(seeds)} seed files, seed {args.seed}; "
          f"budget {FUZZ_DECODE_SECONDS} s + {TIME_SLACK_S} s, peak memory +{PEAK_MEMORY_LIMIT_MB} MiB", flush=True)
    by_kind: Dict[str, int] = collections.Counter()
    failures = 0
    slowest = 0.0
    started = time.perf_counter()
    for index, item in enumerate(inputs(seeds, args.inputs, args.seed), start=1):
        outcome = run_one(handler, item.data)
        by_kind[outcome.kind] += 1
        slowest = max(slowest, outcome.seconds)
        if outcome.failure:
            failures += 1
            saved = "" if args.no_save else f" -> {save_regression(item, outcome).relative_to(REPO)}"
            print(f"FAIL {item.seed_name} {'+'.join(item.mutations)}: {outcome.failure}{saved}", flush=True)
        if index % 100 == 0:
            print(f"  {index}/{args.inputs} inputs, {failures} failures, {time.perf_counter() - started:.0f} s", flush=True)
    print(f"\n{'outcome':<36}{'inputs':>8}")
    for kind, count in sorted(by_kind.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"{kind:<36}{count:>8}")
    print(f"\n{args.inputs} inputs in {time.perf_counter() - started:.0f} s, slowest {slowest:.2f} s; {failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
