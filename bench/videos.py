"""The videos the benchmark measures: synthesized H.264 videos (cached on disk) and the shared corpus.

Synthesized content is generated in yuv420p directly (no RGB conversion per frame) so that a
600 s video encodes in 1-2 minutes on two cores. Two content kinds:

- ``texture``: a smooth random texture panning 3 px/frame, fresh grain and a moving square;
  ~1.8 Mbit/s at 720p like ordinary camera uploads (the 720p stage video, x264 ``medium``);
- ``pattern_noise``: a static gradient with a moving square and a 96x96 patch of fresh grain
  (~1.5 Mbit/s, the bitrate of ordinary 720p uploads, so a 600 s video is ~110 MB and the upload's
  own memory cost is measured), x264 ``ultrafast`` so 600 s encodes in ~1.5 min: used for the
  10/60/600 s cost-growth videos, all with the same size, codec, rate and GOP.

Videos are cached under ``build/bench-cache/`` keyed by every parameter, so reruns reuse them.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from bench.util import progress
from harness.synth import make_video
from harness.paths import REPO, SHARED_VIDEOS

CACHE = REPO / "build" / "bench-cache"
CACHE_VERSION = 1
NOISE_PATCH, NOISE_STD = 96, 24
GRAIN = 4


@dataclass(frozen=True)
class SynthSpec:
    seconds: float
    width: int = 1280
    height: int = 720
    fps: int = 30
    gop: int = 250
    preset: str = "medium"
    content: str = "texture"

    @property
    def frames(self) -> int:
        return int(round(self.seconds * self.fps))

    @property
    def name(self) -> str:
        return (f"synth_{self.width}x{self.height}_{self.seconds:g}s_{self.fps}fps_gop{self.gop}"
                f"_{self.preset}_{self.content}_v{CACHE_VERSION}.mp4")

    def describe(self) -> Dict[str, object]:
        return {**asdict(self), "codec": "h264 (libx264)", "pix_fmt": "yuv420p"}


def _planes(spec: SynthSpec, rng: np.random.Generator):
    h, w = spec.height, spec.width
    if spec.content == "texture":
        # Smooth noise: random values on a coarse grid, bilinearly upsampled, plus fine grain.
        coarse = rng.integers(16, 235, size=(h // 16 + 2, (w + 4 * spec.frames) // 16 + 2)).astype(np.float32)
        ys = np.linspace(0, coarse.shape[0] - 1.001, h)
        xs = np.linspace(0, coarse.shape[1] - 1.001, coarse.shape[1] * 16 - 16)
        y0, x0 = ys.astype(int), xs.astype(int)
        fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
        top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x0 + 1] * fx
        bottom = coarse[y0 + 1][:, x0] * (1 - fx) + coarse[y0 + 1][:, x0 + 1] * fx
        luma = top * (1 - fy) + bottom * fy
        luma += rng.normal(0, 6, size=luma.shape).astype(np.float32)
        wide_y = np.clip(luma, 16, 235).astype(np.uint8)
        wide_u = np.clip(128 + (wide_y[::2, ::2].astype(np.int16) - 128) // 3, 16, 240).astype(np.uint8)
        wide_v = np.clip(128 - (wide_y[::2, ::2].astype(np.int16) - 128) // 4, 16, 240).astype(np.uint8)
        return wide_y, wide_u, wide_v
    if spec.content in ("pattern", "pattern_noise"):
        y = np.broadcast_to(np.linspace(16, 235, w, dtype=np.float32)[None, :], (h, w)).astype(np.uint8)
        u = np.broadcast_to(np.linspace(64, 192, h // 2, dtype=np.float32)[:, None], (h // 2, w // 2)).astype(np.uint8)
        v = np.full((h // 2, w // 2), 128, dtype=np.uint8)
        return y, u, v
    raise ValueError(f"unknown content {spec.content!r}")


def encode(spec: SynthSpec, seed: int = 0) -> bytes:
    """Encode the video in memory (H.264 in MP4, constant rate, keyframe every ``gop`` frames)."""
    rng = np.random.default_rng(seed)
    wide_y, wide_u, wide_v = _planes(spec, rng)
    h, w = spec.height, spec.width
    square = max(8, min(h, w) // 6) // 2 * 2
    planes = np.empty((h * 3 // 2, w), dtype=np.uint8)
    noise = grain = None
    if spec.content == "texture":
        # Sensor-like grain, fresh each frame (8 patterns cycled, each an offset -2..+2).
        grain = rng.integers(-GRAIN, GRAIN + 1, size=(8, h, w), dtype=np.int8).astype(np.uint8)
    if spec.content == "pattern_noise":
        # Fresh-looking grain in one patch (30 precomputed patches, cycled: farther apart than
        # any reference frame), so the bitrate is that of ordinary 720p footage (~1.3 Mbit/s).
        noise = rng.normal(128, NOISE_STD, size=(30, NOISE_PATCH, NOISE_PATCH)).clip(16, 235).astype(np.uint8)

    def frame(i: int) -> np.ndarray:
        pan = (3 * i) if spec.content == "texture" else 0
        planes[:h] = wide_y[:, pan : pan + w]
        chroma = planes[h:].reshape(h // 2, w)  # u then v, each (h/2, w/2), stored row-packed
        u = wide_u[:, pan // 2 : pan // 2 + w // 2]
        v = wide_v[:, pan // 2 : pan // 2 + w // 2]
        chroma.reshape(-1)[: u.size] = u.reshape(-1)
        chroma.reshape(-1)[u.size :] = v.reshape(-1)
        x = (i * 4) % max(2, w - square) // 2 * 2
        y = h // 5 // 2 * 2
        planes[y : y + square, x : x + square] = 235
        if noise is not None:
            planes[h - NOISE_PATCH - 16 : h - 16, 16 : 16 + NOISE_PATCH] = noise[i % len(noise)]
        if grain is not None:
            np.add(planes[:h], grain[i % len(grain)], out=planes[:h], casting="unsafe")
        return planes

    return make_video(
        frames=spec.frames, width=w, height=h, fps=spec.fps, gop=spec.gop, frame_source=frame, frame_format="yuv420p",
        pts=range(spec.frames), time_base=Fraction(1, spec.fps),
        # Fixed GOP: no scene-cut keyframes, so keyframes fall every `gop` frames exactly.
        options={"preset": spec.preset, "sc_threshold": "0",
                 "x264-params": f"keyint={spec.gop}:min-keyint={spec.gop}:scenecut=0"},
    )


def synthesized(spec: SynthSpec) -> Path:
    """Path of the cached video for ``spec``, encoding it first when missing."""
    path = CACHE / spec.name
    if path.is_file() and path.stat().st_size > 0:
        return path
    import time

    progress(f"synthesizing {spec.name} ({spec.frames} frames; cached for later runs) ...")
    started = time.perf_counter()
    data = encode(spec)
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + f".{os.getpid()}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)
    progress(f"  {len(data) / 2**20:.1f} MB in {time.perf_counter() - started:.1f} s")
    return path


def read_manifest(folder: Path = SHARED_VIDEOS) -> List[Dict[str, str]]:
    manifest = folder / "MANIFEST.tsv"
    if not manifest.is_file():
        return []
    lines = manifest.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, row.split("\t"))) for row in lines[1:] if row.strip()]


def real_videos(folder: Path = SHARED_VIDEOS, only: Optional[List[str]] = None) -> List[Dict[str, object]]:
    """Decodable real videos of the shared corpus (not the corrupted or audio-only test files).

    ``kinetics_size``: a Kinetics-400 video as the dataset ships them (~340x256, ~10 s), the
    videos the tighter targets apply to.
    """
    videos = []
    for row in read_manifest(folder):
        name = row.get("file", "")
        content = row.get("content", "")
        if not row.get("video_codec") or row.get("video_codec") == "none":
            continue
        if "CORRUPTED" in content or "AUDIO ONLY" in content:
            continue
        if only is not None and name not in only:
            continue
        path = folder / name
        if not path.is_file():
            continue
        videos.append({
            "name": name, "path": path, "size": row.get("WxH", ""), "codec": row.get("video_codec", ""),
            "duration_s": float(row.get("duration_s") or 0), "kinetics_size": "Kinetics-400" in content,
        })
    return videos
