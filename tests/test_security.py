"""Secure defaults (issue 5): loopback binds, token authorization, no model registration, URL
allow-list, size limits -- checked in config.properties and against a real TorchServe started
from it (the session ``server``: the repo config with only ports and paths replaced).

TorchServe 0.12 answers a missing or wrong token with HTTP 400 ``InvalidKeyException`` (not 401).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import stat
from typing import Dict, List, Tuple

import psutil
import pytest
import requests

from client.config import read_properties
from client.endpoint import default_model
from harness.paths import REPO
from harness.torchserve import LocalTorchServe

pytestmark = pytest.mark.integration

CONFIG = read_properties(REPO / "config.properties")
MODEL = default_model()  # config.properties' model, as `make start` serves it
LOOPBACK_IPS = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _java_unescape(value: str) -> str:
    # java.util.Properties turns "\\" into "\" when it loads the file.
    return re.sub(r"\\(.)", r"\1", value)


def _invalid_key(reply: requests.Response) -> bool:
    try:
        return reply.status_code == 400 and reply.json().get("type") == "InvalidKeyException"
    except ValueError:
        return False


# -- the configuration file --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["inference_address", "management_address", "metrics_address"])
def test_http_apis_bind_to_loopback(name: str) -> None:
    url = CONFIG[name]
    host = url.split("://", 1)[1].rsplit(":", 1)[0].strip("[]")
    assert ipaddress.ip_address(host).is_loopback, f"{name}={url} is reachable from other machines"


@pytest.mark.parametrize("name", ["grpc_inference_address", "grpc_management_address"])
def test_grpc_apis_bind_to_loopback(name: str) -> None:
    # 0.12 defaults gRPC to 127.0.0.1 too; the explicit line keeps it so whatever TorchServe's default.
    assert name in CONFIG, f"{name} missing: gRPC would listen wherever TorchServe's default says"
    assert ipaddress.ip_address(CONFIG[name]).is_loopback


def test_token_authorization_on_and_model_api_off() -> None:
    assert CONFIG.get("disable_token_authorization", "false").lower() == "false"
    assert CONFIG.get("enable_model_api", "false").lower() == "false"
    assert CONFIG.get("enable_envvars_config", "false").lower() == "false", (
        "environment variables could silently turn token authorization off (TS_DISABLE_TOKEN_AUTHORIZATION)"
    )


def test_allowed_urls_admit_only_archives_in_a_local_model_store() -> None:
    patterns = [re.compile(p) for p in _java_unescape(CONFIG["allowed_urls"]).split(",")]

    def allowed(url: str) -> bool:
        return any(p.fullmatch(url) for p in patterns)

    assert allowed(f"file://{REPO}/model_store/{MODEL}.mar")
    for url in [
        "https://example.com/model_store/evil.mar",  # ShellTorch: a remote archive
        "http://169.254.169.254/latest/meta-data/model_store/x.mar",  # SSRF to cloud metadata
        "s3://bucket/model_store/evil.mar",
        "file:///etc/passwd",
        f"file://{REPO}/model_store/{MODEL}.mar.py",
        f"file://{REPO}/model_store/workflow.war",
        "model_store/evil.mar://",
        f"file://{REPO}/model_store/../../tmp/evil.mar",  # traversal out of the store
        f"file://{REPO}/model_store/sub/evil.mar",
    ]:
        assert not allowed(url), f"allowed_urls admits {url}"


def test_request_and_response_limits_fit_video() -> None:
    request = int(CONFIG["max_request_size"])
    response = int(CONFIG["max_response_size"])
    # Large enough for the handler's own upload limit (model-config.yaml max_upload_mb: 200) to
    # be the one users meet, small enough to bound what one request can make the frontend buffer.
    assert 200 * 2**20 <= request <= 1024 * 2**20
    assert 64 * 2**10 <= response <= 64 * 2**20


# -- the running server --------------------------------------------------------------------------


def _endpoints(server: LocalTorchServe) -> List[Tuple[str, str, str]]:
    """(api, method, url) for calls that must need a token."""
    return [
        ("inference", "POST", server.predictions_url),
        ("inference", "GET", f"{server.inference_url}/ping"),
        ("management", "GET", f"{server.management_url}/models"),
        ("management", "GET", f"{server.management_url}/models/{MODEL}"),
        ("management", "PUT", f"{server.management_url}/models/{MODEL}?min_worker=3"),
    ]


def test_right_key_is_accepted(server: LocalTorchServe) -> None:
    """The control for the refusals below: the same calls with the right key succeed."""
    assert requests.get(f"{server.inference_url}/ping", headers=server.keys.inference_header(), timeout=10).ok
    assert requests.get(f"{server.management_url}/models", headers=server.keys.management_header(), timeout=10).ok


@pytest.mark.parametrize("variant", ["none", "wrong", "other_api_key", "not_bearer"])
def test_missing_or_wrong_token_is_refused(server: LocalTorchServe, variant: str) -> None:
    before = len(server.workers())
    for api, method, url in _endpoints(server):
        other = server.keys.management if api == "inference" else server.keys.inference
        right = server.keys.inference if api == "inference" else server.keys.management
        headers: Dict[str, str] = {
            "none": {},
            "wrong": {"Authorization": "Bearer not-the-key"},
            "other_api_key": {"Authorization": f"Bearer {other}"},
            "not_bearer": {"Authorization": right},
        }[variant]
        reply = requests.request(method, url, data=b"\x00" * 64, headers=headers, timeout=30)
        assert _invalid_key(reply), f"{method} {url} with {variant} token: {reply.status_code} {reply.text[:200]}"
        assert "Token Authorization failed" in reply.json()["message"]
    assert len(server.workers()) == before, "a refused scale request changed the workers"


def test_registering_or_deleting_models_is_refused(server: LocalTorchServe) -> None:
    headers = server.keys.management_header()
    models_url = f"{server.management_url}/models"
    for source in ["https://example.com/evil.mar", f"file://{server.workdir}/model_store/{MODEL}.mar", f"{MODEL}.mar"]:
        reply = requests.post(models_url, params={"url": source, "model_name": "intruder"}, headers=headers, timeout=30)
        assert reply.status_code == 405, f"registering {source}: {reply.status_code} {reply.text[:200]}"
        assert reply.json()["type"] == "MethodNotAllowedException"
    reply = requests.delete(f"{models_url}/{MODEL}", headers=headers, timeout=30)
    assert reply.status_code == 405
    listed = requests.get(models_url, headers=headers, timeout=10).json()["models"]
    assert [m["modelName"] for m in listed] == [MODEL]
    assert any(w["status"] == "READY" for w in server.workers())


def test_workflow_registration_is_limited_by_allowed_urls(server: LocalTorchServe) -> None:
    """0.12 keeps the workflow API on even with enable_model_api=false: allowed_urls is what stops it."""
    headers = server.keys.management_header()
    for source in ["https://example.com/evil.war", "file:///etc/passwd"]:
        reply = requests.post(f"{server.management_url}/workflows", params={"url": source}, headers=headers, timeout=30)
        assert 400 <= reply.status_code < 500, f"{source}: {reply.status_code} {reply.text[:200]}"
        assert "allowed URL" in reply.json()["message"]
    listed = requests.get(f"{server.management_url}/workflows", headers=headers, timeout=10)
    assert listed.ok and listed.json().get("workflows", []) == []


def test_key_file_is_private(server: LocalTorchServe) -> None:
    mode = stat.S_IMODE(os.stat(server.workdir / "key_file.json").st_mode)
    assert mode & 0o077 == 0, f"key_file.json is readable by others: {oct(mode)}"


def test_inference_key_refresh_with_the_api_key(server: LocalTorchServe) -> None:
    """docs/operations.md: GET /token?type=inference with the API key replaces the inference key."""
    key_file = server.workdir / "key_file.json"
    api_key = json.loads(key_file.read_text())["API"]["key"]
    old = server.keys
    try:
        refused = requests.get(f"{server.management_url}/token", params={"type": "inference"},
                               headers=old.management_header(), timeout=10)
        assert _invalid_key(refused), "the management key must not mint keys"
        reply = requests.get(f"{server.management_url}/token", params={"type": "inference"},
                             headers={"Authorization": f"Bearer {api_key}"}, timeout=10)
        assert reply.status_code == 200, reply.text
        new = json.loads(key_file.read_text())["inference"]["key"]
        assert new != old.inference
        ping = f"{server.inference_url}/ping"
        assert _invalid_key(requests.get(ping, headers=old.inference_header(), timeout=10))
        assert requests.get(ping, headers={"Authorization": f"Bearer {new}"}, timeout=10).ok
    finally:
        server._keys = None  # the fixture re-reads the key file: later tests use the new key


def _non_loopback_addresses() -> List[Tuple[int, str]]:
    found = []
    for addresses in psutil.net_if_addrs().values():
        for a in addresses:
            if a.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            ip = ipaddress.ip_address(a.address.split("%")[0])
            if not ip.is_loopback:
                found.append((a.family, a.address))
    return found


def _server_processes(server: LocalTorchServe) -> List[psutil.Process]:
    assert server.process is not None
    return psutil.Process(server.process.pid).children(recursive=True)


def test_listeners_are_loopback_only(server: LocalTorchServe) -> None:
    """Every TCP listener of TorchServe (java frontend and Python workers) is on a loopback address."""
    listening = []
    for proc in _server_processes(server):
        for conn in proc.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN:
                listening.append((proc.name(), conn.laddr.ip, conn.laddr.port))
    ports = {port for _, _, port in listening}
    assert set(server.ports.values()) <= ports, f"expected listeners on {server.ports}, found {listening}"
    exposed = [entry for entry in listening if entry[1] not in LOOPBACK_IPS]
    assert not exposed, f"listening beyond loopback: {exposed}"


def test_apis_unreachable_on_non_loopback_addresses(server: LocalTorchServe) -> None:
    addresses = _non_loopback_addresses()
    for port in server.ports.values():  # control: each port answers on loopback
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    if not addresses:
        pytest.skip("this machine has no non-loopback address (listeners checked by test_listeners_are_loopback_only)")
    reached = []
    for family, address in addresses:
        for name, port in server.ports.items():
            target = socket.getaddrinfo(address, port, family, socket.SOCK_STREAM)[0][4]
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.settimeout(2)
                try:
                    sock.connect(target)
                    reached.append(f"{name} on {address}:{port}")
                except OSError:
                    pass
    print(f"\n[security] non-loopback addresses probed: {[a for _, a in addresses]}; ports {sorted(server.ports.values())}")
    assert not reached, f"reachable from outside loopback: {reached}"
