"""Live section: ``python -m client live`` on a 25 fps stream, a window every second, through the
benchmark's real TorchServe.

A PyAV process plays a Kinetics video (re-encoded once to 25 fps H.264, a keyframe a second, looped
to the length asked) as MPEG-TS over UDP on loopback in real time; the live client reads it for
that long. Reported: latency from a window's last frame read to its answer (p50, p95), the share of
hops whose window was skipped because the previous answer had not come back, and the server's own
time per window (the part of the latency the client cannot remove).
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

from bench.util import percentile, progress, summary
from harness.paths import REPO

FPS = 25
HOP_S = 1.0


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(served: Any, video: Path, seconds: float, concurrency: int = 1) -> Dict[str, Any]:
    """Stream ``video`` for ``seconds`` at 25 fps and classify it live at hop 1 s."""
    from client.live import cli as live_cli
    from client.live.sender import make_stream_file

    with tempfile.TemporaryDirectory(prefix="slowfast-live-") as tmp:
        stream = make_stream_file(video, Path(tmp) / "stream.ts", fps=FPS, seconds=seconds + 5.0)
        url = f"udp://127.0.0.1:{_free_udp_port()}"
        progress(f"live: {video.name} at {FPS} fps over {url} for {seconds:g} s, a window every {HOP_S:g} s "
                 f"(concurrency {concurrency})")
        sender = subprocess.Popen([sys.executable, "-m", "client.live.sender", str(stream), url], cwd=REPO,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out = Path(tmp) / "live.jsonl"
        try:
            status, stats = live_cli.run(
                [url, "--url", served.server.inference_url, "--key-file", str(served.server.workdir / "key_file.json"),
                 "--hop", f"{HOP_S:g}", "--duration", f"{seconds:g}", "--concurrency", str(concurrency),
                 "--out", str(out), "--timeout", "60"], stdout=io.StringIO())
        finally:
            sender.kill()
            sender.wait()
        lines: List[Dict[str, Any]] = [json.loads(line) for line in out.read_text().splitlines()]
    windows = [line for line in lines if "window" in line and line["status"] == "ok"]
    if stats is None or not windows:
        return {"error": f"no window answered (exit status {status})"}
    latencies = [line["latency_ms"] for line in windows]
    handler = [line["handler_ms"] for line in windows if "handler_ms" in line]
    hops = stats.sent + stats.skipped
    result = {
        "clip": video.name, "fps": FPS, "hop_s": HOP_S, "seconds": seconds, "concurrency": concurrency,
        "sent": stats.sent, "answered": stats.answered, "failed": stats.failed, "skipped": stats.skipped,
        "skipped_share": round(stats.skipped / hops, 3) if hops else None,
        "latency_ms": {"p50": round(percentile(latencies, 50), 1), "p95": round(percentile(latencies, 95), 1),
                       "max": round(max(latencies), 1)},
        "handler_ms": summary(handler) if handler else None,
        "clip_kb_median": round(sorted(line["clip_bytes"] for line in windows)[len(windows) // 2] / 1024, 1),
        "buffer_max_s": round(stats.buffer_seconds_max, 2),
        "buffer_max_kb": round(stats.buffer_bytes_max / 1024, 1),
    }
    progress(f"  {result['answered']} windows answered, {result['skipped']} skipped "
             f"({100 * (result['skipped_share'] or 0):.0f}% of hops); latency p50 {result['latency_ms']['p50']:.0f} ms, "
             f"p95 {result['latency_ms']['p95']:.0f} ms")
    return result


def render(result: Dict[str, Any]) -> List[str]:
    if "error" in result:
        return ["", f"9. Live: {result['error']}"]
    h = result.get("handler_ms") or {}
    return [
        "",
        f"9. Live (python -m client live): {result['clip']} at {result['fps']} fps over UDP, a window every "
        f"{result['hop_s']:g} s for {result['seconds']:g} s, concurrency {result['concurrency']}",
        f"  latency from a window's last frame read to its answer: p50 {result['latency_ms']['p50']:.0f} ms, "
        f"p95 {result['latency_ms']['p95']:.0f} ms (server's own time p50 {h.get('median', float('nan')):.0f} ms)",
        f"  windows: {result['answered']} answered, {result['failed']} failed, {result['skipped']} skipped "
        f"({100 * (result['skipped_share'] or 0):.0f}% of hops: due while the previous answer was out)",
        f"  video sent per window: {result['clip_kb_median']:.0f} kB median (remuxed); client buffer at most "
        f"{result['buffer_max_s']:.2f} s / {result['buffer_max_kb']:.0f} kB",
    ]
