"""``python -m client PATH... [options]``: classify one video, or a whole collection.

One video file (and no ``--out FILE.jsonl``): its answer as a table (``--json``: the server's JSON),
its embedding (``--embedding [--out FILE.npy]``) or its timeline (``--timeline [--csv F] [--plot F.png]``).
Anything else (several paths, folders, ``--glob``, ``--from-list``, ``--out results.jsonl``): a bulk
run writing one JSON line per input (client/results.py), with progress, retries and ``--resume``.
Only the part of each video that the request's windows need is sent (client/window_cut.py), unless
``--whole-file``. Exit status: 0 when every input was answered, 1 when any failed, 2 for a usage error, 130 on Ctrl-C.
``--protocol kserve-v1|kserve-v2 --url http://INFERENCESERVICE``: the same over KServe (no timelines).
``python -m client live SOURCE``: a camera or a stream, window by window (client/live/cli.py).
``python -m client people VIDEO``: persons and their actions at keyframes (client/people.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from client.bulk import pending, run_bulk, server_concurrency
from client.endpoint import ClientError, add_endpoint_options, resolve_endpoint
from client.inputs import discover
from client.options import add_request_options, kinds_of, request_fields
from client.predict import run_one
from client.progress import Progress
from client.results import ResultsWriter, embeddings_path, write_embeddings
from client.kserve import TORCHSERVE
from client.transport import TIMELINE_ON_KSERVE, Transport


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m client",
        description="Classify videos with slowfast-serve: one file as a table, or files/folders as JSON lines.",
        epilog="A camera or a stream: python -m client live SOURCE (python -m client live --help).",
    )
    parser.add_argument("paths", nargs="*", type=Path, metavar="PATH",
                        help="video files or folders (searched recursively for videos)")
    what = parser.add_argument_group("what to send (bulk)")
    what.add_argument("--from-list", metavar="FILE", default=None, help="also the paths in FILE, one a line (- = stdin)")
    what.add_argument("--glob", action="append", default=[], metavar="PATTERN",
                      help="in folders, send the files matching PATTERN (e.g. '*.mp4'; repeatable) "
                           "instead of those that look like videos")
    cut = parser.add_argument_group("what to send of each video")
    cut.add_argument("--whole-file", action="store_true",
                      help="send each file whole; by default a request that needs only some windows (the centre "
                           "window, --clips, --start/--end) sends only the packets from the keyframe before each "
                           "window to its end, copied without re-encoding, and gets the same answer")
    cut.add_argument("-v", "--verbose", action="store_true", help="one video: say what was sent (the cut, or why the whole file)")
    where = parser.add_argument_group("output")
    where.add_argument("--out", type=Path, default=None,
                       help="bulk: results.jsonl (embeddings also to results.npy beside it); "
                            "one video with --embedding: FILE.npy")
    where.add_argument("--resume", action="store_true", help="skip inputs already answered in --out, send the rest")
    where.add_argument("--overwrite", action="store_true", help="start --out afresh when it exists")
    where.add_argument("--json", action="store_true", help="one video: print the server's JSON instead of a table")
    where.add_argument("--csv", type=Path, default=None, help="timeline: one row per window and rank to this CSV")
    where.add_argument("--plot", type=Path, default=None, help="timeline: chart of the top classes over time (PNG; asks the server for "
                            "20 labels a window so the lines are whole, shows --topk in the table)")
    where.add_argument("--plot-classes", type=int, default=5, help="timeline chart: how many classes (default: 5)")
    where.add_argument("--progress-interval", type=float, default=10.0,
                       help="seconds between progress lines when not on a terminal (default: 10)")
    add_request_options(parser)
    server = add_endpoint_options(parser)
    server.add_argument("--management-url", default=None,
                        help="management API, asked for batchSize x workers (default: beside --url)")
    server.add_argument("--management-token", default=None,
                        help="management key (default: $SLOWFAST_MANAGEMENT_TOKEN, else the local key file)")
    server.add_argument("--concurrency", type=int, default=None,
                        help="requests in flight (default: the model's batchSize x workers, from the management API)")
    server.add_argument("--timeout", type=float, default=400.0, help="seconds to wait for one answer (default: 400, above the server's responseTimeout of 360)")
    server.add_argument("--retries", type=int, default=3,
                        help="attempts per input, resending after a connection failure or timeout, 503, 429 and "
                             "TorchServe's 'Worker died.' / 'Worker scaled down.', with backoff; never after "
                             "another 5xx or a 4xx (default: 3)")
    server.add_argument("--backoff", type=float, default=1.0,
                        help="seconds before the first resend, doubling, with jitter (default: 1)")
    return parser


def is_single(args: argparse.Namespace) -> bool:
    """One video file answered on the terminal (or as a .npy), not a bulk run."""
    return (len(args.paths) == 1 and not args.paths[0].is_dir() and not args.from_list and not args.glob
            and (args.out is None or args.out.suffix == ".npy"))


def check_usage(args: argparse.Namespace, single: bool) -> Optional[str]:
    """What is wrong with this combination of flags, or None."""
    if not args.paths and not args.from_list:
        return "give video files or folders, or --from-list FILE"
    try:
        kinds = kinds_of(args)
    except ValueError as exc:
        return str(exc)
    if args.retries < 1:
        return "--retries is the number of attempts per input: 1 or more"
    if args.concurrency is not None and args.concurrency < 1:
        return "--concurrency must be 1 or more"
    if args.timeline and args.protocol != TORCHSERVE:
        return TIMELINE_ON_KSERVE
    if (args.csv or args.plot) and not (single and args.timeline):
        return "--csv and --plot draw the timeline of one video: give one file and --timeline"
    if single and args.out is not None and "embedding" not in kinds:
        return "--out FILE.npy holds embeddings: add --embedding (or --output both)"
    if not single and args.out is not None and args.out.suffix == ".npy":
        return "a bulk run writes JSON lines: --out results.jsonl (embeddings then go to results.npy beside it)"
    if args.resume and args.overwrite:
        return "--resume and --overwrite contradict each other"
    if args.resume and args.out is None:
        return "--resume continues a results file: give it with --out"
    if not single and args.out is not None and args.out.exists() and not (args.resume or args.overwrite):
        return f"{args.out} exists: --resume to continue it, --overwrite to start over"
    return None


def run_many(args: argparse.Namespace, transport: Transport) -> int:
    inputs = discover([str(p) for p in args.paths], args.glob, args.from_list)
    if not inputs:
        raise ClientError("no videos found in the paths given")
    writer = ResultsWriter(args.out, resume=args.resume, stream=sys.stdout)
    if args.concurrency:
        concurrency = args.concurrency
    elif pending(inputs, writer):
        concurrency = server_concurrency(transport, lambda m: print(m, file=sys.stderr))
    else:
        concurrency = 1  # nothing to send: no need to ask the server
    try:
        tally = run_bulk(inputs, transport, request_fields(args), writer, concurrency,
                         lambda t: Progress(t, interval=args.progress_interval), whole_file=args.whole_file)
    finally:
        writer.close()
    print(tally.summary(), file=sys.stderr)
    if args.out is not None and "embedding" in kinds_of(args):
        target = embeddings_path(args.out)
        rows = write_embeddings(args.out, target)
        print(f"wrote {target}: {rows} embeddings, row i = the line with embedding_row i in {args.out}",
              file=sys.stderr)
    return 1 if tally.failures else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["live"]:  # a file called "live" is still ./live
        from client.live.cli import main as live_main

        return live_main(argv[1:])
    if argv[:1] == ["people"]:  # who is doing what, per person (client/people.py)
        from client.people import main as people_main

        return people_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    single = is_single(args)
    problem = check_usage(args, single)
    if problem:
        parser.error(problem)
    try:
        endpoint = resolve_endpoint(args.url, args.model, args.token, args.key_file,
                                    args.management_url, args.management_token, args.protocol, args.headers)
        transport = Transport(endpoint, timeout=args.timeout, attempts=args.retries, backoff=args.backoff,
                              on_retry=lambda f, delay: print(f"note: {f.describe()[:300]}; resending in {delay:.1f} s",
                                                              file=sys.stderr))
        return run_one(args, transport) if single else run_many(args, transport)
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted" + ("" if single else ": the lines written so far are complete; --resume continues"),
              file=sys.stderr)
        return 130

