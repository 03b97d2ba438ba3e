"""The tests' fake HTTP servers behave as real ones where the tests depend on it."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import requests

from tests.fakes import FakeEvolution


def test_a_request_cut_before_its_whole_body_is_neither_recorded_nor_answered() -> None:
    """A process killed between the headers and the body (urllib3 writes them separately) leaves a request a real
    gateway never handles: the crash tests read every recorded send as JSON."""
    fake = FakeEvolution()
    try:
        address = urlsplit(fake.url)
        with socket.create_connection((address.hostname, address.port)) as sock:
            sock.sendall(
                b"POST /message/sendText/loja HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 60\r\n\r\n{"number": "5511'
            )
            sock.shutdown(socket.SHUT_WR)  # the rest never comes
            assert sock.recv(1024) == b""  # closed without an answer
        time.sleep(0.05)
        assert fake.sends() == []

        whole = requests.post(f"{fake.url}/message/sendText/loja", json={"number": "5511", "text": "Oi"}, timeout=5)
        assert whole.status_code == 200 and [s.json["text"] for s in fake.sends()] == ["Oi"]
    finally:
        fake.server.shutdown()
