"""Command-line flags -> the request options the server reads (handler/options.py), as headers.

The video goes as the raw body; TorchServe gives handlers no query string, so each option travels
as a header of its own name (``topk: 10``), which the handler reads like a multipart field.
"""

from __future__ import annotations

import argparse
from typing import Dict

OUTPUTS = ("labels", "embedding", "both")
DEFAULT_TOPK = 5


def add_request_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("request options (passed to the server as they are)")
    group.add_argument("--topk", type=int, default=DEFAULT_TOPK,
                       help="labels per answer (default: 5; with --threshold and no other --topk: every label above it)")
    group.add_argument("--threshold", type=float, default=None,
                       help="only labels with probability >= this (0..1): multi-label (sigmoid) models, or a cut-off")
    group.add_argument("--clips", type=int, default=None, help="temporal windows to average (server default: 1)")
    group.add_argument("--crops", type=int, choices=(1, 3), default=None, help="spatial crops per window")
    group.add_argument("--output", choices=OUTPUTS, default=None,
                       help="labels (default), embedding (the 2,304-value SlowFast feature) or both")
    group.add_argument("--embedding", action="store_true", help="same as --output embedding")
    group.add_argument("--normalize", action="store_true", help="L2-normalise the embedding")
    group.add_argument("--timeline", action="store_true", help="a window every --stride seconds, each with its own answer")
    group.add_argument("--stride", type=float, default=None, help="timeline step in seconds (server default: 64/30)")
    group.add_argument("--start", type=float, default=None, help="look from this second on")
    group.add_argument("--end", type=float, default=None, help="look up to this second")


def output_of(args: argparse.Namespace) -> str:
    """labels, embedding or both, from --output and the --embedding shorthand."""
    if args.embedding and args.output not in (None, "embedding", "both"):
        raise ValueError(f"--embedding and --output {args.output} contradict each other")
    return args.output or ("embedding" if args.embedding else "labels")


def request_fields(args: argparse.Namespace, stream: bool = False) -> Dict[str, str]:
    """The options a request carries, as header name -> text (only those the user set)."""
    fields: Dict[str, str] = {}
    if getattr(args, "threshold", None) is None or args.topk != DEFAULT_TOPK:
        fields["topk"] = str(args.topk)
    for name in ("clips", "crops", "stride", "start", "end", "threshold"):
        value = getattr(args, name, None)
        if value is not None:
            fields[name] = f"{value:g}" if isinstance(value, float) else str(value)
    output = output_of(args)
    if output != "labels":
        fields["output"] = output
    if args.normalize:
        fields["normalize"] = "true"
    if args.timeline:
        fields["timeline"] = "true"
    if stream:
        fields["stream"] = "true"
    return fields
