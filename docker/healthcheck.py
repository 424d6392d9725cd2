"""The image's HEALTHCHECK: TorchServe's /ping, with the inference key (0.12's /ping needs a token).

Reads the inference address from $TS_HOME/config.properties and the key from $TS_HOME/key_file.json
(TorchServe writes it in its working directory). Exit 0 (healthy): /ping answered 200 (every
registered model has its workers); or it refused the key (400 InvalidKeyException: the key in the
file expired after token_expiration_min or was replaced): the server answers, but its workers cannot
be seen without a fresh key, which this check must not mint (that would cut off every client).
Exit 1: anything else (500 Unhealthy while workers load or after they died, no answer, no key file).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path


def read_address(config: Path) -> str:
    address = ""
    for line in config.read_text().splitlines():
        key, _, value = line.strip().partition("=")
        if key.strip() == "inference_address":
            address = value.strip()  # a later key wins, as in Java's Properties
    return address.replace("://0.0.0.0:", "://127.0.0.1:")


def check(home: Path, timeout: float = 8.0) -> int:
    try:
        url = read_address(home / "config.properties") + "/ping"
        key = json.loads((home / "key_file.json").read_text())["inference"]["key"]
    except (OSError, ValueError, KeyError) as exc:
        print(f"unhealthy: no address or key yet ({type(exc).__name__}: {exc})")
        return 1
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            print(f"healthy: {url} answered {reply.status}")
            return 0
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")
        if exc.code == 400 and "InvalidKeyException" in body:
            print(f"alive: {url} refused the key in key_file.json (expired or replaced); workers not checked")
            return 0
        print(f"unhealthy: {url} answered {exc.code}: {body[:200]}")
        return 1
    except OSError as exc:
        print(f"unhealthy: {url}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(check(Path(os.environ.get("TS_HOME", "/home/model-server"))))
