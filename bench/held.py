"""Section 8, ``held``: work for clients who left must not hold the main worker (issue 19, part 2).

TorchServe 0.12 cannot cancel a request whose client hung up, so the deployment registers the
archive twice (config.properties): slowfast_r50_timeline takes long timelines on its own worker at
nice 10, slowfast_r50 (the main registration) every other request. Measured through that server, with the project's client
(which sends timelines to the timeline registration):

- a default request alone (median and p95 of ``reps`` after a warm-up);
- a streamed timeline of a long video read for 3 s, then abandoned (connection closed), and the
  default request sent right after: its latency against max(5 s, 3x alone);
- ``clients`` clients streaming long timelines at once, and ``reps`` default requests meanwhile: their
  p95 against 3x alone;
- the same long timeline sent to the main registration: refused before decoding (413), and how fast.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List

from bench.util import fmt_ms, percentile, progress, ratio, summary, target
from harness.paths import MODEL, TIMELINE_MODEL

ABANDON_AFTER_S = 3.0


def _transport(served: Any, timeout: float):
    from client.endpoint import resolve_endpoint
    from client.transport import Transport

    endpoint = resolve_endpoint(served.server.inference_url, token=served.server.keys.inference)
    return Transport(endpoint, timeout=timeout, attempts=1)


def _default_request_s(transport: Any, body: bytes) -> float:
    from client.transport import Answer

    started = time.perf_counter()
    outcome = transport.send(body, {})
    if not isinstance(outcome, Answer):
        raise RuntimeError(f"the default request failed: {outcome.describe()}")
    return time.perf_counter() - started


def _stream(transport: Any, video: bytes, stop: threading.Event, after_s: float = float("inf")) -> Dict[str, Any]:
    """Stream a timeline; hang up (close the connection) after ``after_s`` or once ``stop`` is set."""
    from client.endpoint import ClientError

    started = time.perf_counter()
    read, first = 0, None
    lines = transport.stream(video, {"timeline": "true", "stream": "true"})
    try:
        for line in lines:
            if "window" not in line:
                break
            read += 1
            first = first if first is not None else time.perf_counter() - started
            if stop.is_set() or time.perf_counter() - started >= after_s:
                break
    except ClientError:  # a read timeout while queued behind the other timelines
        pass
    finally:
        lines.close()
        transport.session().close()
    return {"windows_read": read, "first_line_s": first, "held_s": time.perf_counter() - started}


def measure(served: Any, video: Dict[str, Any], long_video: Dict[str, Any], reps: int, clients: int,
            warmup: int = 1) -> Dict[str, Any]:
    body, long_body = video["path"].read_bytes(), long_video["path"].read_bytes()
    transport = _transport(served, timeout=600)
    progress(f"held: {video['name']} alone ({warmup} warm-up + {reps})")
    for _ in range(warmup):
        _default_request_s(transport, body)
    alone = [_default_request_s(transport, body) for _ in range(reps)]
    alone_p50 = percentile(alone, 50)

    progress(f"  {long_video['name']} as a streamed timeline to the main registration (refused?)")
    started = time.perf_counter()
    refused = served.post(long_body, {"timeline": "true", "stream": "true"})
    refusal = {"status": refused.status_code, "s": round(time.perf_counter() - started, 3),
               "message": refused.text[:400]}
    refused.close()

    progress(f"  a streamed timeline of it through the client, abandoned {ABANDON_AFTER_S:g} s in, then a default request")
    abandoned = _stream(transport, long_body, threading.Event(), ABANDON_AFTER_S)
    after = _default_request_s(transport, body)

    progress(f"  {clients} clients streaming long timelines at once, {reps} default requests meanwhile")
    stop = threading.Event()
    pool = ThreadPoolExecutor(clients)
    # Connected until the end: the timeline worker answers them one after the other, so most wait
    # for their first line meanwhile; the server's stop (right after this section) ends those waits.
    streams = [pool.submit(_stream, _transport(served, timeout=3600), long_body, stop) for _ in range(clients)]
    time.sleep(5.0)  # uploaded, and the timeline worker busy
    loaded = [_default_request_s(transport, body) for _ in range(reps)]
    running = sum(not s.done() for s in streams)
    stop.set()
    pool.shutdown(wait=False)
    runs = [s.result() for s in streams if s.done()]
    out = {
        "clip": video["name"], "long_video": long_video["name"], "long_seconds": long_video.get("seconds"),
        "alone_s": summary(alone), "alone_p50_s": round(alone_p50, 3), "alone_p95_s": round(percentile(alone, 95), 3),
        "clip_registration_refusal": refusal,
        "abandoned": {**abandoned, "after_s": round(ABANDON_AFTER_S, 1)},
        "after_abandoned_s": round(after, 3),
        "after_abandoned_bound_s": round(max(5.0, 3.0 * alone_p50), 3),
        "clients": clients, "clients_still_streaming": running, "client_runs": runs,
        "loaded_s": summary(loaded), "loaded_p95_s": round(percentile(loaded, 95), 3),
        "loaded_p95_over_alone": ratio(percentile(loaded, 95), alone_p50),
    }
    progress(f"  alone p50 {alone_p50:.2f} s; after the abandoned stream {after:.2f} s; with {clients} timelines "
             f"p95 {out['loaded_p95_s']:.2f} s ({out['loaded_p95_over_alone']:.2f}x); the main registration answered "
             f"the long timeline {refusal['status']} in {refusal['s']:.2f} s")
    return out


def targets(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    held = results.get("http", {}).get("held")
    if not held:
        return []
    name = f"{held['long_seconds']:g} s video" if held.get("long_seconds") else held["long_video"]
    return [
        target(
            f"default request after a streamed timeline abandoned {held['abandoned']['after_s']:g} s in / max(5 s, 3x alone) [{name}]",
            ratio(held["after_abandoned_s"], held["after_abandoned_bound_s"]), "<=", 1.0,
            f"{held['after_abandoned_s']:.2f} s / {held['after_abandoned_bound_s']:.2f} s (alone p50 {held['alone_p50_s']:.2f} s)",
            "the abandoned timeline runs on to its end on the timeline registration's worker (nice 10); "
            "the main worker only shares the cores with it",
        ),
        target(
            f"default request p95 with {held['clients']} long timelines streaming / alone [{name}]",
            held["loaded_p95_over_alone"], "<=", 3.0,
            f"p95 {held['loaded_p95_s']:.2f} s / p50 alone {held['alone_p50_s']:.2f} s; "
            f"{held['clients_still_streaming']} of {held['clients']} still streaming at the end",
            "CPU shared with the niced timeline worker; memory bandwidth and caches are shared too",
        ),
    ]


def render(results: Dict[str, Any]) -> List[str]:
    held = results.get("http", {}).get("held")
    if not held:
        return []
    refusal = held["clip_registration_refusal"]
    return [
        "", f"8. Clients who leave: {held['clip']} on {MODEL} while {held['long_video']} timelines run on "
            f"{TIMELINE_MODEL}",
        f"  default request alone p50 {fmt_ms(held['alone_p50_s'] * 1000)} ms, p95 {fmt_ms(held['alone_p95_s'] * 1000)} ms; "
        f"after a timeline abandoned {held['abandoned']['after_s']:g} s in ({held['abandoned']['windows_read']} windows "
        f"read): {fmt_ms(held['after_abandoned_s'] * 1000)} ms",
        f"  with {held['clients']} long timelines streaming: p50 {fmt_ms(held['loaded_s']['median'] * 1000)} ms, "
        f"p95 {fmt_ms(held['loaded_p95_s'] * 1000)} ms ({held['loaded_p95_over_alone']:.2f}x alone)",
        f"  the same timeline sent to {MODEL}: HTTP {refusal['status']} in {fmt_ms(refusal['s'] * 1000)} ms",
    ]
