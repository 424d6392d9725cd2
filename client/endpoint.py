"""Where to send requests and with which token: the inference URL, the management URL, their keys,
the protocol spoken there (TorchServe's ``/predictions`` or KServe v1/v2) and any extra headers.

Defaults (the model, the address) are read from config.properties when a command runs, never at
import: a command given ``--model`` works whatever config.properties says (``load_models=all``, none).

Tokens: an explicit option, else an environment variable, else -- only when the URL is on this
machine (127.0.0.1 / localhost / ::1) -- TorchServe's key_file.json (the repo root by default,
``--key-file`` to point elsewhere). A key file is never used for a remote URL.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple
from urllib.parse import urlparse

from client import kserve
from client.config import REPO, repo_property
from client.kserve import PROTOCOLS, TORCHSERVE
from client.keys import KEY_FILE, KeyFileError, Keys, read_keys

# The same model registered again for long work (config.properties load_models): its own worker
# takes timelines, so one a client abandons (TorchServe cannot cancel it) never holds the main registration's worker.
TIMELINE_SUFFIX = "_timeline"


def default_model() -> str:
    """The first model config.properties loads (``load_models=name=name.mar,...``): the one
    `make start` serves by default; ``--model`` picks another."""
    first = repo_property("load_models", "").split(",")[0].strip()
    name = first.partition("=")[0].strip() if "=" in first else first.removesuffix(".mar")
    if not name or name == "all":
        raise ClientError("config.properties names no model in load_models: pass --model NAME")
    return name


TOKEN_ENV = "SLOWFAST_TOKEN"
MANAGEMENT_TOKEN_ENV = "SLOWFAST_MANAGEMENT_TOKEN"
TORCHSERVE_MANAGEMENT_PORT = 8081


class ClientError(RuntimeError):
    """Anything that stops the client; the message is what the user sees."""


def default_url() -> str:
    """The inference address of this repo's config.properties (what `make start` serves)."""
    return repo_property("inference_address", "http://127.0.0.1:8080")


def _parse(url: str):
    parsed = urlparse(url if "://" in url else f"http://{url}")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ClientError(f"not an http(s) URL: {url!r}")
    return parsed


def predictions_url(url: str, model: Optional[str] = None) -> str:
    """``http://host:port`` -> ``http://host:port/predictions/<model>`` (None: config.properties'
    model); a full URL is kept."""
    parsed = _parse(url)
    base = parsed.geturl().rstrip("/")
    if "/predictions/" in parsed.path:
        return base
    return f"{base}/predictions/{model or default_model()}"


def timeline_url(predictions: str) -> str:
    """``.../predictions/<model>`` -> ``.../predictions/<model>_timeline``, where timelines go."""
    base, _, model = predictions.rstrip("/").rpartition("/")
    return predictions if model.endswith(TIMELINE_SUFFIX) else f"{base}/{model}{TIMELINE_SUFFIX}"


def management_url(inference_url: str) -> str:
    """The management API that goes with an inference URL: this repo's when it is this repo's
    server, else the same host on TorchServe's default management port."""
    parsed = _parse(inference_url)
    ours = _parse(default_url())
    if (parsed.hostname, parsed.port) == (ours.hostname, ours.port):
        return repo_property("management_address", "http://127.0.0.1:8081")
    host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
    return f"{parsed.scheme}://{host}:{TORCHSERVE_MANAGEMENT_PORT}"


def is_local(url: str) -> bool:
    host = (urlparse(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _local_keys(url: str, key_file: Optional[Path]) -> Optional[Keys]:
    if not is_local(url):
        return None
    path = Path(key_file) if key_file else REPO / KEY_FILE
    try:
        return read_keys(path.parent, path.name)
    except KeyFileError:
        if key_file:  # asked for explicitly: say why it did not work
            raise ClientError(f"cannot read the inference key from {path}") from None
        return None


def resolve_token(url: str, token: Optional[str], key_file: Optional[Path]) -> Optional[str]:
    """Inference key: explicit > $SLOWFAST_TOKEN > local key file (loopback URLs only) > None."""
    if token:
        return token
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV]
    keys = _local_keys(url, key_file)
    return keys.inference if keys else None


def resolve_management_token(url: str, token: Optional[str], key_file: Optional[Path]) -> Optional[str]:
    """Management key: explicit > $SLOWFAST_MANAGEMENT_TOKEN > local key file (loopback only) > None."""
    if token:
        return token
    if os.environ.get(MANAGEMENT_TOKEN_ENV):
        return os.environ[MANAGEMENT_TOKEN_ENV]
    try:
        keys = _local_keys(url, key_file)
    except ClientError:
        return None  # the inference key's lookup already said what is wrong with the file
    return keys.management if keys else None


@dataclass(frozen=True)
class Endpoint:
    """A model's inference URL and management URL, each with its token (None: send none).

    ``protocol``: what the inference URL speaks (``torchserve``: ``/predictions``; ``kserve-v1`` /
    ``kserve-v2``: an InferenceService's routes, client/kserve.py). ``timeline_url``: where
    timelines are sent (TorchServe's long-work registration; None on KServe). ``headers``: extra
    (name, value) pairs every inference request carries (a cluster's auth), over the token's.
    """

    url: str
    token: Optional[str]
    management_url: str
    management_token: Optional[str]
    model: str = ""
    timeline_url: Optional[str] = None
    protocol: str = TORCHSERVE
    headers: Tuple[Tuple[str, str], ...] = ()


def resolve_endpoint(
    url: Optional[str], model: Optional[str] = None, token: Optional[str] = None, key_file: Optional[Path] = None,
    management: Optional[str] = None, management_token: Optional[str] = None, protocol: str = TORCHSERVE,
    headers: Sequence[Tuple[str, str]] = (),
) -> Endpoint:
    """Everything the client needs to reach a model, from the command line's values (None: defaults,
    read now from config.properties).
    Raises:
        ClientError: no model given and none in config.properties, or a URL that is not http(s).
    """
    model = model or default_model()
    address = url or default_url()
    if protocol != TORCHSERVE:
        inference = kserve.codec(protocol).url(_parse(address).geturl(), model)
        # An InferenceService has no TorchServe management API and no long-work registration.
        return Endpoint(url=inference, token=resolve_token(inference, token, key_file), management_url="",
                        management_token=None, model=model, timeline_url=None, protocol=protocol,
                        headers=tuple(headers))
    predictions = predictions_url(address, model)
    manage = (management or management_url(predictions)).rstrip("/")
    return Endpoint(
        url=predictions,
        token=resolve_token(predictions, token, key_file),
        management_url=manage,
        management_token=resolve_management_token(manage, management_token, key_file),
        model=model,
        timeline_url=timeline_url(predictions),
        protocol=protocol,
        headers=tuple(headers),
    )


def header_option(text: str) -> Tuple[str, str]:
    """``--header 'Name: value'`` -> (name, value).
    Raises:
        argparse.ArgumentTypeError: no colon, a name that is not an HTTP token, or a line break.
    """
    name, colon, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not colon or not name or any(c in name for c in ' \t"(),/;<=>?@[]{}') or "\r" in text or "\n" in text:
        raise argparse.ArgumentTypeError(f"a header is 'Name: value' on one line, got {text!r}")
    return name, value


def add_endpoint_options(parser: "argparse.ArgumentParser") -> "argparse._ArgumentGroup":
    """The "server" flags every client command shares (--url, --protocol, --model, --token,
    --header, --key-file); the group is returned for the command's own (timeouts, retries...)."""
    server = parser.add_argument_group("server")
    server.add_argument("--url", default=None,
                        help=f"inference address or full predictions URL; with --protocol kserve-*, the "
                             f"InferenceService's URL (default: {default_url()})")
    server.add_argument("--protocol", choices=PROTOCOLS, default=TORCHSERVE,
                        help="torchserve: POST /predictions/<model> (default); kserve-v1: /v1/models/<model>:predict; "
                             "kserve-v2: /v2/models/<model>/infer (Open Inference Protocol)")
    server.add_argument("--model", default=None,
                        help="model name (default: the first model config.properties' load_models names)")
    server.add_argument("--token", default=None,
                        help=f"inference key, sent as 'Authorization: Bearer KEY' (default: ${TOKEN_ENV}, else the "
                             f"local key file)")
    server.add_argument("--header", dest="headers", action="append", type=header_option, default=[],
                        metavar="'NAME: VALUE'",
                        help="an extra header on every request, e.g. a cluster's 'Authorization: Bearer ...' "
                             "(repeatable; wins over --token)")
    server.add_argument("--key-file", type=Path, default=None,
                        help=f"TorchServe key file for local URLs (default: {REPO / KEY_FILE})")
    return server
