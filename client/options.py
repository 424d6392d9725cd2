"""Command-line flags -> the request options the server reads, as headers.

The flags come from the server's own table of request options (``handler.option_table.REQUEST_OPTIONS``):
one flag per option, with its type, choices and help. The video goes as the raw body; TorchServe
gives handlers no query string, so each option travels as a header of its own name (``topk: 10``),
which the handler reads like a multipart field.
"""

from __future__ import annotations

import argparse
from typing import Any, Dict, Optional, Sequence, Tuple

from handler.option_table import OUTPUTS, REQUEST_OPTIONS, RequestOption, request_option

_TYPES = {"int": int, "float": float, "seconds": float}


def _help(option: RequestOption) -> str:
    if option.client_default is not None:
        return f"{option.help} (default: {option.client_default})"
    if option.default is not None and option.value_type != "bool":
        return f"{option.help} (server default: {option.default})"
    if option.unset:
        return f"{option.help} (server default: {option.unset})"
    return option.help


def add_request_options(
    parser: argparse.ArgumentParser, *, only: Optional[Sequence[str]] = None,
    title: str = "request options (passed to the server as they are)",
) -> None:
    """A flag per request option of ``REQUEST_OPTIONS`` (``only``: these names), and ``--embedding``
    (``--output embedding``) where ``output`` is one."""
    group = parser.add_argument_group(title)
    for option in REQUEST_OPTIONS:
        if not option.client or (only is not None and option.name not in only):
            continue
        flag = f"--{option.name}"
        if option.value_type == "bool":
            group.add_argument(flag, action="store_true", help=_help(option))
        elif option.value_type == "choice":
            group.add_argument(flag, type=type(option.choices[0]), choices=option.choices, default=option.client_default, help=_help(option))
        else:
            group.add_argument(flag, type=_TYPES[option.value_type], default=option.client_default, help=_help(option))
    if only is None or "output" in only:
        group.add_argument("--embedding", action="store_true", help="same as --output embedding")


def output_of(args: argparse.Namespace) -> str:
    """The ``output`` asked for (one of ``OUTPUTS``), from --output and the --embedding shorthand."""
    embedding, output = getattr(args, "embedding", False), getattr(args, "output", None)
    if embedding and output is not None and "embedding" not in OUTPUTS[output]:
        raise ValueError(f"--embedding and --output {output} contradict each other")
    return output or ("embedding" if embedding else "labels")


def answer_key(kind: str) -> str:
    """Where an answer holds an output kind: ``predictions`` for labels, the kind's name otherwise
    (handler/render.py's ``OutputKind.key``)."""
    return "predictions" if kind == "labels" else kind


def kinds_of(args: argparse.Namespace) -> Tuple[str, ...]:
    """The output kinds the answer will hold (``labels``, ``embedding``, ...: ``OUTPUTS``)."""
    return OUTPUTS[output_of(args)]


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:g}" if isinstance(value, float) else str(value)


def request_fields(args: argparse.Namespace, stream: bool = False) -> Dict[str, str]:
    """The options a request carries, as header name -> text (only those the user set)."""
    given: Dict[str, Any] = {option.name: getattr(args, option.name, None) for option in REQUEST_OPTIONS}
    given["output"] = output_of(args)
    given["stream"] = stream
    fields: Dict[str, str] = {}
    for option in REQUEST_OPTIONS:
        value = given[option.name]
        # A flag left at the server's default is not sent (booleans: only when set).
        if value is None or value is False or (option.name == "output" and value == option.default):
            continue
        fields[option.name] = _as_text(value)
    # --threshold alone asks for every label above it: the client's own topk default is not sent.
    if "threshold" in fields and given["topk"] == request_option("topk").client_default:
        del fields["topk"]
    return fields
