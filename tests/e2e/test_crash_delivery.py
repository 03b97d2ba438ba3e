"""End-to-end: a server SIGKILLed at the moment the gateway takes a part of a reply. The next server must not send
that part again (it finds the part among the assistant's own echoes, or asks Evolution's findMessages / Twilio's
Messages list) and must lose nothing: every reply reaches its chat whole, each part exactly once.

The fakes kill the sending server from inside their sendText handler, after recording the request (the gateway
took it) and before answering, the narrowest point of the window: the worker never learns the part went out.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.e2e.conftest import Harness, ServerProcess, upsert, wait_until
from tests.e2e.fakes_e2e_gateways import FakeTwilio, form_of, gateway_env, post_twilio, twilio_form
from tests.fakes import Recorded

LEASE = 2.0
PARTS = ("Oi! Tudo bem por aqui.", "O bolo de cenoura custa R$ 48.", "Entregamos ainda hoje.")
REPLY = "\n\n".join(PARTS)
CRASH_ENV = {"SPLIT_MESSAGES": "true", "TYPING_MS_PER_CHAR": "0", "LEASE_SECONDS": LEASE, "DEBOUNCE_SECONDS": 0.5}


def number(n: int) -> str:
    return f"55119{n:08d}"


class Killer:
    """Kills the server that is sending, once per chat, when the gateway takes the chat's part number `at`; and
    plays Evolution's echo of that part before the kill, after it, or not at all."""

    def __init__(self) -> None:
        self.server: ServerProcess | None = None
        self.plan: dict[str, tuple[int, str]] = {}  # recipient -> (part index to die on, echo mode)
        self.done: set[str] = set()
        self.kills = 0
        self.late_echoes: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def on_part(self, recipient: str, text: str, echo: Callable[[ServerProcess], None] | None) -> None:
        with self.lock:
            if recipient not in self.plan or recipient in self.done or self.server is None:
                return
            index, mode = self.plan[recipient]
            if text != PARTS[index]:
                return
            self.done.add(recipient)
            server = self.server
            self.server = None
        if echo is not None and mode == "before":
            echo(server)
        assert server.proc is not None
        os.killpg(server.proc.pid, signal.SIGKILL)
        self.kills += 1
        if echo is not None and mode == "after":
            self.late_echoes.append({"echo": echo})


@pytest.fixture
def killer() -> Iterator[Killer]:
    yield Killer()


def accepted_texts(sends: list[Recorded], recipient: str, *, field: Callable[[Recorded], tuple[str, str]]) -> list[str]:
    return [text for to, text in (field(s) for s in sends) if to == recipient]


def test_evolution_kills_at_accept_never_duplicate_a_part(e2e: Harness, killer: Killer) -> None:
    rounds = 14
    modes = ("before", "after", "none")
    for n in range(rounds):
        killer.plan[f"{number(n)}@s.whatsapp.net"] = (n % 2, modes[n % 3])  # die on the 1st or the 2nd part
    e2e.gemini.reply_for = lambda recorded: REPLY

    def on_send(recorded: Recorded, answer: dict[str, Any]) -> None:
        recipient, text = recorded.json["number"], recorded.json["text"]

        def echo(server: ServerProcess) -> None:  # Evolution's send.message for the part, with the id it gave
            event = upsert(text, jid=recipient, from_me=True, msg_id=answer["key"]["id"], event="send.message")
            try:
                server.post(event)
            except Exception:  # noqa: BLE001 (a server being killed may not answer: the echo is best effort)
                pass

        killer.on_part(recipient, text, echo)

    e2e.evolution.on_send = on_send
    for n in range(rounds):
        server = e2e.python_server(**CRASH_ENV)
        for late in killer.late_echoes:
            late["echo"](server)
        killer.late_echoes.clear()
        killer.server = server
        server.burst(["Oi", "Quanto custa o bolo?"], jid=f"{number(n)}@s.whatsapp.net")
        wait_until(lambda server=server: not server.running, timeout=20, what=f"the kill of round {n + 1}")
    last = e2e.python_server(**CRASH_ENV)
    for late in killer.late_echoes:
        late["echo"](last)

    def evolution_field(send: Recorded) -> tuple[str, str]:
        return send.json["number"], send.json["text"]

    def all_whole() -> bool:
        sends = e2e.sends()
        return all(
            accepted_texts(sends, f"{number(n)}@s.whatsapp.net", field=evolution_field) == list(PARTS)
            for n in range(rounds)
        )

    assert killer.kills == rounds
    wait_until(all_whole, timeout=30 + rounds, what="every reply whole, each part once")
    e2e.assert_no_more(sends=rounds * len(PARTS), seconds=2 * LEASE)
    # /health counts for every process of the host: each killed part was found (its echo, or findMessages), not
    # sent again. A part whose server died before the gateway took it (another chat's, in flight at a kill) may be
    # sent again, rightly: the check above shows no part went out twice.
    assert last.health()["counters"].get("parts_found_after_crash", 0) >= rounds


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    fake = FakeTwilio()
    yield fake
    fake.close()


def test_twilio_kills_at_accept_never_duplicate_a_part(e2e: Harness, killer: Killer, twilio: FakeTwilio) -> None:
    rounds = 6
    for n in range(rounds):
        killer.plan[f"whatsapp:+{number(n)}"] = (n % 2, "none")  # no echoes on Twilio: its Messages list tells
    e2e.gemini.reply_for = lambda recorded: REPLY
    original = twilio.default_answer

    def default_answer(recorded: Recorded) -> Any:
        if recorded.method == "POST" and recorded.path.endswith("/Messages.json"):
            form = form_of(recorded)
            killer.on_part(form["To"], form["Body"], None)
        return original(recorded)

    twilio.default_answer = default_answer  # type: ignore[method-assign]
    env = {**CRASH_ENV, **gateway_env(twilio=twilio)}
    for n in range(rounds):
        server = e2e.python_server(**env)
        killer.server = server
        for text in ("Oi", "Quanto custa o bolo?"):
            assert post_twilio(server.url, twilio_form(text, number=number(n))).status_code == 200
        wait_until(lambda server=server: not server.running, timeout=20, what=f"the kill of round {n + 1}")
    last = e2e.python_server(**env)

    def twilio_field(send: Recorded) -> tuple[str, str]:
        form = form_of(send)
        return form["To"], form["Body"]

    def all_whole() -> bool:
        sends = twilio.sends()
        return all(
            accepted_texts(sends, f"whatsapp:+{number(n)}", field=twilio_field) == list(PARTS) for n in range(rounds)
        )

    assert killer.kills == rounds
    wait_until(all_whole, timeout=30 + rounds, what="every Twilio reply whole, each part once")
    time.sleep(2 * LEASE)
    assert len(twilio.sends()) == rounds * len(PARTS)
    assert last.health()["counters"].get("parts_found_after_crash", 0) >= 1
