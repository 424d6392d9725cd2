"""Classify one video with a running slowfast-serve and print the top-k actions as a table.

The token: ``--token``, else ``$SLOWFAST_TOKEN``, else -- only when the URL is on this machine
(127.0.0.1 / localhost / ::1) -- the inference key from TorchServe's key_file.json (the repo
root by default, ``--key-file`` to point elsewhere). A key file is never used for a remote URL.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence
from urllib.parse import urlparse

import requests

from client.config import repo_property
from client.keys import KEY_FILE, KeyFileError, read_keys

REPO = Path(__file__).resolve().parent.parent
MODEL = "slowfast_r50"
TOKEN_ENV = "SLOWFAST_TOKEN"
# TorchServe's answers when the worker running a request went away (crash, or scaled down while
# busy). Classification is idempotent, so these are safe to resend.
RETRYABLE_MESSAGES = ("Worker died", "Worker scaled down")


class ClientError(RuntimeError):
    """Anything that stops a prediction; the message is what the user sees."""


def default_url() -> str:
    """The inference address of this repo's config.properties (what `make start` serves)."""
    return repo_property("inference_address", "http://127.0.0.1:8080")


def predictions_url(url: str, model: str = MODEL) -> str:
    """``http://host:port`` -> ``http://host:port/predictions/<model>``; a full URL is kept."""
    parsed = urlparse(url if "://" in url else f"http://{url}")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ClientError(f"not an http(s) URL: {url!r}")
    base = parsed.geturl().rstrip("/")
    if "/predictions/" in parsed.path:
        return base
    return f"{base}/predictions/{model}"


def is_local(url: str) -> bool:
    host = (urlparse(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_token(url: str, token: Optional[str], key_file: Optional[Path]) -> Optional[str]:
    """Explicit token > $SLOWFAST_TOKEN > local key file (loopback URLs only) > None."""
    if token:
        return token
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV]
    if not is_local(url):
        return None
    path = Path(key_file) if key_file else REPO / KEY_FILE
    try:
        return read_keys(path.parent, path.name).inference
    except KeyFileError:
        if key_file:  # asked for explicitly: say why it did not work
            raise ClientError(f"cannot read the inference key from {path}") from None
        return None


def server_message(reply: requests.Response) -> str:
    """The server's own words: TorchServe's {code,type,message} or the handler's {reason,message}."""
    try:
        body = reply.json()
    except ValueError:
        return reply.text.strip()[:500] or reply.reason
    if isinstance(body, dict):
        kind = body.get("reason") or body.get("type") or ""
        message = body.get("message") or json.dumps(body)
        return f"{kind}: {message}" if kind else str(message)
    return json.dumps(body)[:500]


def predict(
    video: Path, url: str, token: Optional[str], topk: int = 5, clips: Optional[int] = None,
    crops: Optional[int] = None, timeout: float = 300.0, retries: int = 1,
) -> Dict[str, Any]:
    try:
        data = Path(video).read_bytes()
    except OSError as exc:
        raise ClientError(f"cannot read {video}: {exc.strerror or exc}") from None
    headers = {"Content-Type": "application/octet-stream", "topk": str(topk)}
    if clips is not None:
        headers["clips"] = str(clips)
    if crops is not None:
        headers["crops"] = str(crops)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    for attempt in range(max(retries, 0) + 1):
        try:
            reply = requests.post(url, data=data, headers=headers, timeout=timeout)
        except requests.Timeout:
            raise ClientError(f"no answer from {url} within {timeout:g} s (--timeout)") from None
        except requests.RequestException as exc:
            raise ClientError(f"cannot reach {url}: {exc.__class__.__name__}: {exc}") from None
        if not (reply.status_code >= 500 and any(m in reply.text for m in RETRYABLE_MESSAGES)):
            break
        if attempt < retries:
            print(f"note: {server_message(reply)}; resending ({attempt + 1}/{retries})", file=sys.stderr)
    if not reply.ok:
        message = f"server answered HTTP {reply.status_code}: {server_message(reply)}"
        if reply.status_code == 400 and "InvalidKey" in reply.text:
            message += (
                "\n(token refused: pass --token or set $SLOWFAST_TOKEN to the inference key; keys change on "
                "every start and expire after token_expiration_min, 60 min by default -- see docs/operations.md)"
            )
        raise ClientError(message)
    try:
        body = reply.json()
    except ValueError:
        raise ClientError(f"server answered HTTP {reply.status_code} with non-JSON: {reply.text[:200]!r}") from None
    if not isinstance(body, dict) or not isinstance(body.get("predictions"), list):
        raise ClientError(f"unexpected answer from {url}: {json.dumps(body)[:300]}")
    return body


def format_table(body: Dict[str, Any], video: str = "") -> str:
    predictions: List[Dict[str, Any]] = body["predictions"]
    width = max([len("label")] + [len(str(p.get("label", ""))) for p in predictions])
    lines = []
    info = body.get("video") or {}
    if video or info:
        details = []
        if "duration_s" in info:
            details.append(f"{info['duration_s']:.2f} s")
        if info.get("width") and info.get("height"):
            details.append(f"{info['width']}x{info['height']}")
        if info.get("codec"):
            details.append(str(info["codec"]))
        if "views" in body:
            details.append(f"{body['views']} view(s)")
        timings = body.get("timings_ms") or {}
        if "handler_total" in timings:
            details.append(f"{timings['handler_total'] / 1000:.2f} s in handler")
        lines.append(f"{video}  ({', '.join(details)})" if details else video)
    lines.append(f"{'rank':>4}  {'label':<{width}}  {'index':>5}  {'probability':>11}")
    lines.append(f"{'-' * 4}  {'-' * width}  {'-' * 5}  {'-' * 11}")
    for rank, p in enumerate(predictions, 1):
        lines.append(f"{rank:>4}  {str(p.get('label', '')):<{width}}  {p.get('index', ''):>5}  {p.get('probability', 0):>11.6f}")
    for warning in body.get("warnings") or []:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m client",
        description="Classify a video with slowfast-serve (top-k Kinetics-400 actions).",
    )
    parser.add_argument("video", type=Path, help="video file (mp4, webm, avi, mov, ...)")
    parser.add_argument("--url", default=None, help=f"inference address or full predictions URL (default: {default_url()})")
    parser.add_argument("--model", default=MODEL, help=f"model name (default: {MODEL})")
    parser.add_argument("--topk", type=int, default=5, help="labels to show (default: 5)")
    parser.add_argument("--clips", type=int, default=None, help="temporal windows to average (server default: 1)")
    parser.add_argument("--crops", type=int, choices=(1, 3), default=None, help="spatial crops per window")
    parser.add_argument("--token", default=None, help=f"inference key (default: ${TOKEN_ENV}, else the local key file)")
    parser.add_argument("--key-file", type=Path, default=None,
                        help=f"TorchServe key file for local URLs (default: {REPO / KEY_FILE})")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the answer")
    parser.add_argument("--retries", type=int, default=1,
                        help="resend when the worker died or was scaled down mid-request (default: 1)")
    parser.add_argument("--json", action="store_true", help="print the server's JSON instead of a table")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        url = predictions_url(args.url or default_url(), args.model)
        token = resolve_token(url, args.token, args.key_file)
        body = predict(args.video, url, token, topk=args.topk, clips=args.clips, crops=args.crops,
                       timeout=args.timeout, retries=args.retries)
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(body, indent=2) if args.json else format_table(body, str(args.video)))
    return 0
