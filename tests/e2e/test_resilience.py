"""End-to-end failure handling: `kill -9` of a server, Gemini errors, gateway errors, Redis down and back."""

from __future__ import annotations

import time

from tests.conftest import free_port
from tests.e2e.conftest import (
    CUSTOMER_JID,
    EVOLUTION_APIKEY,
    FALLBACK_TEXT,
    OTHER_JID,
    REDIS_PREFIX,
    REPLY_TIMEOUT_SECONDS,
    Harness,
    last_user_text,
    upsert,
    wait_count,
    wait_until,
)
from tests.fakes import Canned, gemini_answer, gemini_error

BURST = ["Oi", "Quero fazer um pedido", "Duas pizzas grandes"]


def test_kill_9_before_the_deadline_loses_nothing(e2e: Harness) -> None:
    debounce = 1.5
    first = e2e.python_server(DEBOUNCE_SECONDS=debounce, LEASE_SECONDS=3)
    posted_at = time.time()
    first.burst(BURST)
    first.kill()
    killed_at = time.time()
    assert killed_at < posted_at + debounce, "the kill must land before the burst was due"
    assert e2e.redis.zcard(f"{REDIS_PREFIX}:due") == 1, "the burst must be in Redis when the process dies"
    assert not e2e.gemini.received() and not e2e.sends()

    e2e.python_server(DEBOUNCE_SECONDS=debounce, LEASE_SECONDS=3)
    (send,) = e2e.wait_sends(1)
    assert send.json["number"] == CUSTOMER_JID
    (prompt,) = e2e.prompts()
    assert all(text in last_user_text(prompt) for text in BURST)
    e2e.assert_no_more(sends=1, prompts=1, seconds=2 * debounce)


def test_kill_9_while_gemini_is_slow_is_answered_once_after_the_lease(e2e: Harness) -> None:
    lease = 3.0
    e2e.gemini.delay = 3.0
    first = e2e.python_server(LEASE_SECONDS=lease)
    first.burst(BURST)
    e2e.gemini.wait_for(1, timeout=REPLY_TIMEOUT_SECONDS)  # claimed, and waiting on Gemini
    first.kill()
    assert e2e.redis.zcard(f"{REDIS_PREFIX}:leases") == 1, "the claimed batch must be leased in Redis"
    assert not e2e.sends()

    e2e.python_server(LEASE_SECONDS=lease)
    (send,) = e2e.wait_sends(1, timeout=lease + e2e.gemini.delay + REPLY_TIMEOUT_SECONDS)
    assert send.json["number"] == CUSTOMER_JID
    first_call, second_call = e2e.gemini.received()
    assert second_call.at >= first_call.at + lease - 0.5, "re-claimed before the lease expired"
    assert first_call.body == second_call.body, "the new owner must answer the same batch"
    e2e.assert_no_more(sends=1, prompts=2)


def test_kill_9_during_send_finds_the_part_at_evolution_instead_of_resending(e2e: Harness) -> None:
    lease = 3.0
    e2e.gemini.queue(Canned(200, gemini_answer("Resposta gerada uma vez")))
    e2e.evolution.queue(Canned(200, None, delay=5.0))  # the first sendText hangs: the process dies in it
    first = e2e.python_server(LEASE_SECONDS=lease)
    first.burst(BURST)
    e2e.wait_sends(1)
    first.kill()

    second = e2e.python_server(LEASE_SECONDS=lease)
    # Evolution took the part before the process died: the new owner asks findMessages, finds it, and neither
    # sends it again nor asks Gemini again.
    wait_until(
        lambda: any("/chat/findMessages/" in r.path for r in e2e.evolution.received()),
        timeout=lease + REPLY_TIMEOUT_SECONDS,
        what="the new owner asking Evolution",
    )
    wait_until(lambda: second.health()["chats_in_progress"] == 0, timeout=REPLY_TIMEOUT_SECONDS, what="the ack")
    e2e.assert_no_more(sends=1, prompts=1)
    assert second.health()["counters"]["parts_found_after_crash"] == 1


def test_gemini_503_twice_then_ok(e2e: Harness) -> None:
    e2e.gemini.queue(
        Canned(503, gemini_error(503)),
        Canned(503, gemini_error(503)),
        Canned(200, gemini_answer("Resposta depois de duas falhas")),
    )
    server = e2e.python_server()
    server.burst(["Vocês fazem entrega?"])
    (send,) = e2e.wait_sends(1)
    assert send.json["text"] == "Resposta depois de duas falhas"
    assert len(e2e.prompts()) == 3  # two retried 503s and the answer, all for one reply
    e2e.assert_no_more(sends=1, prompts=3)


def test_gemini_down_sends_the_fallback_once(e2e: Harness) -> None:
    e2e.gemini.queue(*[Canned(500, gemini_error(500, "INTERNAL")) for _ in range(50)])
    server = e2e.python_server(GEMINI_MAX_ATTEMPTS=3)
    server.burst(["Preciso de ajuda com meu pedido"])
    (send,) = e2e.wait_sends(1)
    assert send.json == {"number": CUSTOMER_JID, "text": FALLBACK_TEXT}
    assert len(e2e.prompts()) == 3  # GEMINI_MAX_ATTEMPTS, then the apology
    e2e.assert_no_more(sends=1, prompts=3)
    assert server.health()["counters"]["fallbacks"] == 1
    server.assert_logs_private("5511987654321", EVOLUTION_APIKEY, "Preciso de ajuda com meu pedido")


def test_gateway_500s_are_retried_and_delivered_once(e2e: Harness) -> None:
    failures = 3  # more than one call's SEND_MAX_RETRIES + 1, so the worker's own retry is needed too
    e2e.evolution.queue(*[Canned(500, {"status": 500, "error": "Internal Server Error"}) for _ in range(failures)])
    server = e2e.python_server(SEND_MAX_RETRIES=1, DELIVERY_RETRY_BASE_SECONDS=0.3)
    server.burst(["Meu pedido não chegou"])

    sends = e2e.wait_sends(failures + 1)
    assert {s.json["text"] for s in sends} == {"Resposta: Meu pedido não chegou"}
    assert all(s.json["number"] == CUSTOMER_JID for s in sends)
    e2e.assert_no_more(sends=failures + 1, prompts=1)  # the stored reply is resent, Gemini is not asked again
    delivered = len(e2e.sends()) - failures  # the fake answers the queued 500s first, then 2xx
    assert delivered == 1
    counters = server.health()["counters"]
    assert counters["replies_sent"] == 1 and counters["send_failures"] >= 1
    server.assert_logs_private("5511987654321", EVOLUTION_APIKEY, "Meu pedido não chegou")


def test_redis_unreachable_at_start_degrades_and_still_answers(e2e: Harness) -> None:
    server = e2e.python_server(CACHE_REDIS_URI=f"redis://127.0.0.1:{free_port()}/0")
    health = server.health()
    assert (health["redis"], health["status"], health["worker"]) == ("down", "degraded", "alive")

    started = time.time()
    server.burst(BURST)
    retried = upsert("Mensagem com redis fora")
    assert server.post(retried).json()["buffered"] == 1
    assert server.post(retried).json()["duplicates"] == 1  # dedupe works in the process too
    assert time.time() - started < 3, "the webhook must not hang on a dead Redis"

    (send,) = e2e.wait_sends(1)
    assert send.json["number"] == CUSTOMER_JID
    (prompt,) = e2e.prompts()
    burst_text = last_user_text(prompt)
    assert all(burst_text.count(text) == 1 for text in [*BURST[1:], "Mensagem com redis fora"]), burst_text
    e2e.assert_no_more(sends=1, prompts=1)


def test_redis_outage_and_recovery_without_restart(e2e: Harness) -> None:
    server = e2e.python_server()
    assert server.health()["redis"] == "up"
    try:
        e2e.redis_server.stop()
        wait_until(lambda: server.health()["redis"] == "down", timeout=5, what="/health redis down")
        assert server.health()["status"] == "degraded"

        server.burst(["Durante a queda do redis"], jid=OTHER_JID)
        (send,) = e2e.wait_sends(1)
        assert send.json["number"] == OTHER_JID
    finally:
        if e2e.redis_server.process is None:
            e2e.redis_server.start()

    # The service notices by itself (its worker retries Redis after REDIS_RETRY_SECONDS), no /health needed.
    wait_until(lambda: "redis reachable again" in server.logs(), timeout=5, what="the service to see Redis again")
    server.burst(["Depois da volta do redis"])
    keys = e2e.redis_keys()
    assert any(key.endswith(":pending") and CUSTOMER_JID in key for key in keys), keys
    health = server.health()
    assert (health["redis"], health["status"], health["chats_pending"]) == ("up", "ok", 1)
    wait_count(lambda: len(e2e.sends()), 2, timeout=REPLY_TIMEOUT_SECONDS, what="sendText calls")
    assert e2e.sends()[1].json["number"] == CUSTOMER_JID
    assert "Depois da volta do redis" in e2e.sends()[1].json["text"]
    e2e.assert_no_more(sends=2, prompts=2)
