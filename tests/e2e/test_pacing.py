"""End-to-end outbound pacing (pacing.py): one number's replies across several worker processes never exceed its rate
in any 1-second window, and the parts of one reply keep the gap a customer is owed."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from tests.e2e.conftest import Harness, upsert

CHATS = 200
RATE = 10  # sends per second for the one Evolution number of the test


def most_in_one_second(moments: list[float]) -> int:
    """The most moments in any half-open 1-second window."""
    moments = sorted(moments)
    return max(sum(1 for m in moments[i:] if m < start + 1.0) for i, start in enumerate(moments))


def test_two_hundred_replies_for_one_number_keep_its_rate_across_three_processes(e2e: Harness) -> None:
    server = e2e.gunicorn_server(
        workers=3, OUTBOUND_RATE_PER_SECOND_EVOLUTION=RATE, DEBOUNCE_SECONDS=1, LEASE_SECONDS=10
    )
    jids = [f"55119{n:08d}@s.whatsapp.net" for n in range(CHATS)]

    def post(jid: str) -> None:
        response = server.post(upsert(f"Oi, sou o cliente {jid[5:13]}", jid=jid))
        assert response.json()["status"] == "buffered", response.text

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(post, jids))

    waits: list[dict[str, Any]] = []
    deadline = time.time() + 60
    while len(e2e.sends()) < CHATS and time.time() < deadline:
        outbound = requests.get(server.url + "/health", timeout=5).json()["outbound"]
        waits.append(outbound)
        time.sleep(0.5)
    sends = e2e.wait_sends(CHATS, timeout=5)

    assert sorted(send.json["number"] for send in sends) == sorted(jids), "each chat answered once"
    moments = [send.at for send in sends]
    assert max(moments) - min(moments) >= (CHATS - 1) / RATE - 1.0  # 199 gaps of 0.1 s: at least 19 s
    assert most_in_one_second(moments) <= RATE
    # While replies wait for their moment, /health (of whichever process answers) shows it.
    assert any(w["waiting_sends"] > 0 and w["longest_wait_seconds"] > 0 for w in waits), waits[:3]
    assert all(w["rates_per_second"]["evolution"] == RATE for w in waits)
    e2e.assert_no_more(sends=CHATS)


def test_the_parts_of_a_reply_keep_the_customers_gap(e2e: Harness) -> None:
    e2e.gemini.reply_for = lambda recorded: "Bom dia!\n\nTemos pão de queijo.\n\nSai quentinho às 7h."
    server = e2e.gunicorn_server(
        workers=2, SPLIT_MESSAGES="true", TYPING_MS_PER_CHAR=0, OUTBOUND_CUSTOMER_GAP_SECONDS=1.5
    )
    server.burst(["Bom dia, tem pão de queijo?"])

    sends = e2e.wait_sends(3, timeout=20)
    assert [send.json["text"] for send in sends] == ["Bom dia!", "Temos pão de queijo.", "Sai quentinho às 7h."]
    gaps = [b.at - a.at for a, b in zip(sends, sends[1:], strict=False)]
    assert all(gap >= 1.5 - 0.02 for gap in gaps), gaps
    e2e.assert_no_more(sends=3)
