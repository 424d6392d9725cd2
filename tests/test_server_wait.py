"""client.server.wait_ready, which `make start` (and so `make serve`) waits on: it keeps asking
until the model has READY workers, and times out naming the model and the last answer."""

from __future__ import annotations

from typing import Optional

import pytest
import requests

from client import server


def test_wait_ready_asks_again_until_a_worker_is_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = [requests.ConnectionError("refused"), [{"workers": [{"status": "LOADING"}]}],
               [{"workers": [{"status": "READY"}]}]]
    asked = []

    def describe(timeout: float = 5.0, model: Optional[str] = None) -> list:
        asked.append(model)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(server, "describe", describe)
    monkeypatch.setattr(server.time, "sleep", lambda s: None)
    assert server.wait_ready(30, model="my_actions") == [{"workers": [{"status": "READY"}]}]
    assert asked == ["my_actions"] * 3


def test_wait_ready_times_out_naming_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "describe", lambda timeout=5.0, model=None: [{"workers": []}])
    monkeypatch.setattr(server.time, "sleep", lambda s: None)
    with pytest.raises(TimeoutError, match=r"model my_actions not ready after 0 s \(0 of 1 workers ready\)"):
        server.wait_ready(0.01, model="my_actions")
