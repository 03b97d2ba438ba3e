"""gateways/http.GatewaySession: the environment's proxy settings still apply, read once per host."""

from __future__ import annotations

import pytest

from gateways.http import retrying_session


def test_proxy_variables_apply_per_host_and_are_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.local:3128")
    monkeypatch.setenv("NO_PROXY", "gateway.internal")
    session = retrying_session(0)

    def proxies(url: str) -> dict[str, str]:
        found = session.merge_environment_settings(url, {}, None, None, None)["proxies"]
        return {scheme: proxy for scheme, proxy in found.items() if scheme != "no"}

    assert proxies("http://evolution.example:8080/message/sendText/loja") == {"http": "http://proxy.local:3128"}
    assert proxies("http://gateway.internal/message/sendText/loja") == {}  # NO_PROXY
    monkeypatch.delenv("HTTP_PROXY")
    # The same host again: what was read the first time (the environment does not change under a running service).
    assert proxies("http://evolution.example:8080/chat/whatsappNumbers/loja") == {"http": "http://proxy.local:3128"}
    assert proxies("http://other.example/") == {}  # a new host reads the environment as it is now
    # Explicit proxies on a call are honoured as given, never cached.
    given = session.merge_environment_settings(
        "http://evolution.example:8080/", {"http": "http://p:1"}, None, None, None
    )
    assert given["proxies"]["http"] == "http://p:1"
