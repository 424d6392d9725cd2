"""``python -m client live SOURCE [options]``: actions in a camera or a stream, as they happen.

Every ``--hop`` seconds the newest window (the model's, asked of the server) goes to the server as
a small clip; answers are shown as they come and written as JSON lines (``--out``). Stop with
Ctrl-C (a summary follows; exit status 130), ``--duration`` or ``--max-windows``; a file ends by
itself (exit status 0, or 1 if any window failed).

``--people``: each window goes to an action detector instead (``--model``, default
``slowfast_r50_detection``), asked for the keyframe its window is centred on; the persons it finds
(or none, without a person detector on the server) and their actions are shown and written per
window (client/live/report.py).
"""

from __future__ import annotations

import argparse
import signal
from dataclasses import replace
import sys
import threading
from pathlib import Path
from typing import IO, Callable, Dict, Optional, Sequence, Tuple

from client.endpoint import ClientError, add_endpoint_options, resolve_endpoint
from client.live.model import local_short_side, people_window_from_server, window_from_server
from client.live.report import Display, JsonLines, Smoother, summary, window_line
from client.live.runner import LiveRunner, LiveStats, WindowResult
from client.live.source import Reader, parse_source
from client.kserve import KSERVE_V2, TORCHSERVE
from client.options import add_request_options, output_of
from client.options import request_fields as request_options_sent
from client.people import DETECTION_MODEL
from handler.option_table import request_option
from client.transport import Answer, Failure, Transport

FALLBACK_SHORT_SIDE = 256  # only when encoding and the model file is not at hand
SMOOTHING_TOPK = 20  # labels asked per window when averaging or thresholding
INTERRUPTED_WAIT_S = 5.0  # after Ctrl-C: how long the windows in flight may take before --out closes
# The request options a live window may carry (its start and end are set per window).
LIVE_REQUEST_OPTIONS = ("topk", "crops", "output", "normalize")



def _stop_on_ctrl_c(runner: "LiveRunner") -> threading.Event:
    """Ctrl-C (SIGINT) stops the runner and sets the returned event; a second one interrupts at once.

    A KeyboardInterrupt alone is not enough: raised inside PyAV's reading, it can surface as an
    FFmpeg exit error that the reader takes for a stalled stream."""
    interrupted = threading.Event()

    def on_sigint(signum: int, frame: object) -> None:
        if interrupted.is_set():
            raise KeyboardInterrupt
        interrupted.set()
        runner.stop()

    signal.signal(signal.SIGINT, on_sigint)
    return interrupted

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m client live",
        description="Actions in a camera or a stream as they happen: every --hop seconds the newest window "
                    "(the model's) goes to the server as a small clip; answers as a table or lines, and JSON lines.")
    parser.add_argument("source", help="rtsp://, rtmp://, udp://, srt://, http(s):// stream, a camera "
                                       "(/dev/video0) or a video file")
    timing = parser.add_argument_group("windows")
    timing.add_argument("--hop", type=float, default=1.0, help="seconds of stream between windows sent (default: 1)")
    timing.add_argument("--window", type=float, default=None,
                        help="window length in seconds (default: the model's, asked of the server)")
    timing.add_argument("--realtime", action="store_true", help="a file: play it at its own pace, as a live source")
    timing.add_argument("--reencode", action="store_true",
                        help="encode each window at the model's short side instead of copying the stream's packets")
    timing.add_argument("--short-side", type=int, default=None,
                        help="short side of encoded windows (default: the model file's, else 256)")
    timing.add_argument("--concurrency", type=int, default=1,
                        help="windows in flight at once (default: 1); a window due when all are busy is skipped")
    timing.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    timing.add_argument("--max-windows", type=int, default=None, help="stop after sending this many windows")
    persons = parser.add_argument_group("who is doing what")
    persons.add_argument("--people", action="store_true",
                         help=f"send each window to an action detector (--model, default {DETECTION_MODEL}): its "
                              "persons and their actions at the window's middle")
    persons.add_argument("--action-threshold", type=float, default=None, metavar="P",
                         help="--people: actions at or above this probability (default: the server's, 0.5); "
                              "--topk then keeps at most that many of them")
    smooth = parser.add_argument_group("smoothing and events")
    smooth.add_argument("--average", type=int, default=1, help="show the mean over the last N windows (default: 1)")
    smooth.add_argument("--event-threshold", type=float, default=None, metavar="P",
                        help="a label whose (averaged) probability reaches P starts an event; falling below ends it")
    # The server's own option table (handler.option_table.REQUEST_OPTIONS); start and end are per window.
    add_request_options(parser, only=LIVE_REQUEST_OPTIONS, title="request options (each window carries them)")
    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, default=None, help="JSON lines, one per window and event (- : stdout)")
    out.add_argument("--save-clips", type=Path, default=None, metavar="DIR",
                     help="also keep each window's clip as sent (window_NNNNNN.ts/.mkv)")
    source = parser.add_argument_group("source")
    source.add_argument("--stall-timeout", type=float, default=5.0,
                        help="seconds without data before the stream counts as dropped (default: 5)")
    source.add_argument("--give-up", type=float, default=None,
                        help="stop after this many seconds without data (default: keep reconnecting)")
    source.add_argument("--rtsp-transport", choices=("tcp", "udp"), default="tcp", help="RTSP transport (default: tcp)")
    server = add_endpoint_options(parser)
    server.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for one window's answer (default: 30; a later answer is stale)")
    server.add_argument("--retries", type=int, default=1,
                        help="attempts per window (default: 1: the next window is a hop away)")
    return parser


def check_usage(args: argparse.Namespace) -> Optional[str]:
    if args.hop <= 0:
        return "--hop must be > 0 seconds"
    if args.window is not None and args.window <= 0:
        return "--window must be > 0 seconds"
    if args.concurrency < 1:
        return "--concurrency must be 1 or more"
    if args.average < 1:
        return "--average must be 1 or more windows"
    if args.event_threshold is not None and not 0 < args.event_threshold <= 1:
        return "--event-threshold is a probability: 0 < P <= 1"
    if args.retries < 1:
        return "--retries is the number of attempts per window: 1 or more"
    if args.topk < 1:
        return "--topk must be 1 or more"
    try:
        output_of(args)
    except ValueError as exc:
        return str(exc)
    if args.realtime and "://" in args.source:
        return "--realtime paces a file; a stream already comes at its own pace"
    if args.people:
        if args.protocol != TORCHSERVE:
            return "--people talks to TorchServe's /predictions (--protocol torchserve)"
        if args.average > 1 or args.event_threshold is not None:
            return "--average and --event-threshold smooth a classifier's labels; with --people each window stands alone"
        refused = sorted(set(request_options_sent(args)) - {"topk"})
        if refused:
            verb = "does" if len(refused) == 1 else "do"
            return f"--{', --'.join(refused)} {verb} not apply to an action detector (--people): it takes --topk, --action-threshold"
    elif args.action_threshold is not None:
        return "--action-threshold is for --people (a classifier's events: --event-threshold)"
    if args.action_threshold is not None and not 0 <= args.action_threshold <= 1:
        return "--action-threshold is a probability: 0 <= P <= 1"
    if args.protocol == KSERVE_V2 and args.window is None:
        return ("a KServe v2 answer holds no window to learn the model's from: give --window SECONDS "
                "(or use --protocol kserve-v1)")
    return None


def request_fields(args: argparse.Namespace) -> Dict[str, str]:
    """The server options every window carries (its start/end, or keyframe, are added per window)."""
    fields = request_options_sent(args)
    if args.people:  # the detector's own defaults (actions at or above 0.5) unless asked otherwise
        if args.topk == request_option("topk").client_default:
            fields.pop("topk", None)
        if args.action_threshold is not None:
            fields["threshold"] = f"{args.action_threshold:g}"
        return fields
    if args.average > 1 or args.event_threshold is not None:  # smoothing needs more than the labels shown
        fields["topk"] = str(max(args.topk, SMOOTHING_TOPK))
    return fields


def keyframe_of_window(keyframe_at: float, window: float) -> Callable[[Dict[str, str]], Dict[str, str]]:
    """--people: a clip's window (start/end from its first frame) -> the keyframe to ask for, at the
    detector's place in its window (``keyframe_at`` of its ``window`` s: the middle for AVA), so the
    window the server answers from is the clip's."""
    def keyframe(clip_fields: Dict[str, str]) -> Dict[str, str]:
        start = float(clip_fields["end"]) - window  # a clip cut at the stream's start is shorter
        return {"keyframes": f"{max(0.0, start + keyframe_at):.6f}"}

    return keyframe


class LiveOutput:
    """The runner's ``on_result``: smoothing, events, the display and the JSON lines."""

    def __init__(self, display: Display, lines: JsonLines, smoother: Smoother, topk: int, smoothed: bool) -> None:
        self.display, self.lines, self.smoother, self.topk, self.smoothed = display, lines, smoother, topk, smoothed
        self.runner: Optional[LiveRunner] = None
        self.written: Optional[int] = None  # the index of the last window whose line was written

    def result(self, result: WindowResult) -> None:
        line = window_line(result, self.topk)
        scores = []
        events = []
        if isinstance(result.outcome, Answer) and "predictions" in result.outcome.body:
            scores, events = self.smoother.update(result.outcome.body["predictions"], result.end, result.segment)
            if self.smoothed:
                line["smoothed"] = [{"label": label, "score": round(score, 6)} for label, score in scores[: self.topk]]
        # Shown, then written: a window that could not be shown is written as failed (``failed``).
        self.display.window(result, scores, self.runner.stats, self.smoothed)
        self.lines.write(line)
        self.written = result.index
        self.events(events)

    def failed(self, result: WindowResult, error: Exception) -> None:
        """The runner's ``on_report_error``: showing or writing ``result`` raised ``error``. Its line
        says ``failed`` (``report_failed``, the reason) unless it was already written; a note says
        what happened. Each step is tried on its own (the file or the terminal may be what fails)."""
        reason = f"{error.__class__.__name__}: {error}"
        if self.written != result.index:
            failure = Failure("report_failed", f"{reason} while showing or writing this window",
                              attempts=getattr(result.outcome, "attempts", 1))
            try:
                self.lines.write(window_line(replace(result, outcome=failure), self.topk))
                self.written = result.index
            except Exception:  # noqa: BLE001 -- the note below says what went wrong
                pass
        try:
            self.display.note(f"window {result.index}: {reason} while showing or writing it; the run goes on")
        except Exception:  # noqa: BLE001 -- nowhere left to say it
            pass

    def events(self, events) -> None:
        for event in events:
            self.lines.write(event)
            score = "" if event["score"] is None else f" ({event['score']:.4f})"
            self.display.note(f"event {event['event']}: {event['label']} at {event['t']:.2f} s{score}")


def main(argv: Optional[Sequence[str]] = None, stdout: Optional[IO[str]] = None) -> int:
    return run(argv, stdout)[0]


def run(argv: Optional[Sequence[str]] = None, stdout: Optional[IO[str]] = None) -> Tuple[int, Optional[LiveStats]]:
    """``main``'s work: the exit status and the run's counts (None when it never started)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = check_usage(args)
    if problem:
        parser.error(problem)
    stdout = stdout or sys.stdout
    handle: Optional[IO[str]] = None
    runner: Optional[LiveRunner] = None
    try:
        spec = parse_source(args.source, args.realtime)
        model = args.model or (DETECTION_MODEL if args.people else None)
        endpoint = resolve_endpoint(args.url, model, args.token, args.key_file,
                                    protocol=args.protocol, headers=args.headers)
        transport = Transport(endpoint, timeout=args.timeout, attempts=args.retries, backoff=0.5, max_backoff=2.0)
        fields = request_fields(args)
        window = args.window
        window_fields = dict  # the clip's start and end, as they are
        if args.people:
            found, keyframe_at = people_window_from_server(transport, fields)
            window = window or found
            window_fields = keyframe_of_window(keyframe_at, window)
            print(f"window {window:g} s, its keyframe {keyframe_at:g} s in (the action detector's), "
                  f"a window every {args.hop:g} s", file=sys.stderr)
        elif window is None:
            window, fields = window_from_server(transport, fields)
            print(f"window {window:g} s (the model's, from the server), a window every {args.hop:g} s", file=sys.stderr)
        short_side = args.short_side or local_short_side(endpoint.model) or FALLBACK_SHORT_SIDE
        to_stdout = args.out is not None and str(args.out) == "-"
        if args.out is not None and not to_stdout:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            handle = open(args.out, "w", encoding="utf-8")
        shown = sys.stderr if to_stdout else stdout  # JSON lines on stdout: the table goes to stderr
        display = Display(shown, sys.stderr, tty=shown.isatty(), topk=args.topk)
        smoothed = args.average > 1 or args.event_threshold is not None
        output = LiveOutput(display, JsonLines(stdout if to_stdout else handle), Smoother(args.average, args.event_threshold),
                            args.topk, smoothed)
        reader = Reader(spec, reencode=args.reencode, short_side=short_side, stall_timeout=args.stall_timeout,
                        give_up_s=args.give_up, rtsp_transport=args.rtsp_transport)
        runner = LiveRunner(reader, transport, fields, window, args.hop, args.concurrency, output.result,
                            display.note, save_clips=args.save_clips, max_windows=args.max_windows,
                            on_report_error=output.failed, window_fields=window_fields)
        output.runner = runner
        timer = threading.Timer(args.duration, runner.stop) if args.duration else None
        if timer:
            timer.daemon = True
            timer.start()
        status = 0
        interrupted = _stop_on_ctrl_c(runner)
        try:
            stats = runner.run()
            if interrupted.is_set():
                raise KeyboardInterrupt
            runner.wait(args.timeout)
        except KeyboardInterrupt:
            runner.stop()
            display.note(f"interrupted: waiting up to {INTERRUPTED_WAIT_S:g} s for the {runner.in_flight} "
                         f"window(s) in flight (Ctrl-C again: stop at once)")
            try:
                runner.wait(INTERRUPTED_WAIT_S)
            except KeyboardInterrupt:
                pass
            stats, status = runner.stats, 130
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        abandoned = runner.close("no answer before the run stopped")
        if abandoned:
            display.note(f"{abandoned} window(s) still in flight when the run stopped: written as failed (abandoned)")
        output.events(output.smoother.close())
        display.note(summary(stats, args.hop))
        return status or (1 if stats.failed else 0), stats
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1, None
    except KeyboardInterrupt:  # before the stream was opened (asking the server for the window)
        print("interrupted", file=sys.stderr)
        return 130, None
    finally:
        if runner is not None:
            runner.close()  # nothing is written after this: the file can close
        if handle is not None:
            handle.close()
