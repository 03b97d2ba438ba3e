"""Operations end to end: web processes apart from worker processes (`python worker.py`), `/metrics` summed over
every process of the host (prometheus-client multiprocess mode), live gauges of a killed process dropped while its
counters stay, and JSON logs where every line of a burst carries one correlation id, from webhook to send.
"""

from __future__ import annotations

import json
import re
import time

import requests

from tests.e2e.conftest import (
    CUSTOMER_JID,
    DEBOUNCE_SECONDS,
    Harness,
    ServerProcess,
    assert_stays,
    upsert,
    wait_until,
)
from tests.fakes import Canned, gemini_answer

METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def metrics(server: ServerProcess, **headers: str) -> dict[str, float]:
    """`/metrics` as {'name{labels}': value} (labels as printed)."""
    response = requests.get(server.url + "/metrics", headers=headers, timeout=5)
    assert response.status_code == 200, response.text
    values: dict[str, float] = {}
    for line in response.text.splitlines():
        match = METRIC_LINE.match(line)
        if match:
            values[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return values


def total(values: dict[str, float], name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    return sum(
        value for key, value in values.items() if key.split("{", 1)[0] == name and all(label in key for label in wanted)
    )


def test_web_processes_alone_answer_nothing_and_a_worker_started_later_answers_once(e2e: Harness) -> None:
    web = e2e.gunicorn_server(2, WORKER_ENABLED="false")
    health = web.health()
    assert health["workers_alive"] == 0 and health["status"] == "degraded" and health["worker"] == "disabled"
    web.burst(["Oi", "Tudo bem?", "Queria saber o preço"])
    assert_stays(lambda: len(e2e.sends()), 0, seconds=DEBOUNCE_SECONDS * 2.5, what="sends without a worker")
    assert web.health()["chats_pending"] == 1

    worker = e2e.spawn_worker_process()
    wait_until(lambda: e2e.workers_alive() == 1, timeout=15, what="the worker process's heartbeat")
    (send,) = e2e.wait_sends(1)
    assert send.json["text"].startswith("Resposta: Oi\nTudo bem?\nQueria saber o preço")
    e2e.assert_no_more(sends=1)
    assert web.health()["workers_alive"] == 1 and web.health()["status"] == "ok"

    # Counted once over the two web processes and the worker process (whichever web process is asked).
    for _ in range(3):
        values = metrics(web)
        assert total(values, "wa_webhooks_total", gateway="evolution", outcome="buffered") == 3
        assert total(values, "wa_bursts_total", gateway="evolution", action="ai") == 1
        assert total(values, "wa_burst_size_count", gateway="evolution") == 1
        assert total(values, "wa_burst_size_sum", gateway="evolution") == 3
        assert total(values, "wa_debounce_lag_seconds_count", gateway="evolution") == 1
        assert total(values, "wa_sends_total", gateway="evolution", result="sent") == 1
        assert total(values, "wa_model_latency_seconds_count", provider="gemini") == 1
        assert total(values, "wa_model_tokens_total", provider="gemini", direction="output") == 5
        assert values["wa_workers_alive"] == 1 and values["wa_pending_chats"] == 0
        assert not [key for key in values if CUSTOMER_JID.split("@")[0] in key]  # never a number in a label
    # /health counts from the same files: the deployment's totals, not one process's.
    assert web.health()["counters"]["received"] == 3 and web.health()["counters"]["replies_sent"] == 1
    worker.terminate()
    wait_until(lambda: e2e.workers_alive() == 0, timeout=15, what="the worker leaving on SIGTERM")


def test_a_killed_worker_process_is_taken_over_and_its_live_gauge_stops_counting(e2e: Harness) -> None:
    web = e2e.python_server(WORKER_ENABLED="false", LEASE_SECONDS="2")
    e2e.gemini.queue(Canned(200, gemini_answer("Resposta lenta"), delay=30))  # the first worker hangs on Gemini
    first = e2e.spawn_worker_process(LEASE_SECONDS="2")
    wait_until(lambda: e2e.workers_alive() == 1, timeout=15, what="the first worker's heartbeat")
    web.burst(["Oi"])
    wait_until(lambda: len(e2e.prompts()) == 1, timeout=10, what="the first worker asking Gemini")
    wait_until(lambda: total(metrics(web), "wa_replies_in_flight") == 1, timeout=5, what="one reply in flight")
    first.kill()
    # The killed process's live gauge no longer counts; the counters it wrote still do.
    values = metrics(web)
    assert total(values, "wa_replies_in_flight") == 0
    assert total(values, "wa_bursts_total", gateway="evolution") == 1
    assert total(values, "wa_webhooks_total", outcome="buffered") == 1

    second = e2e.spawn_worker_process(LEASE_SECONDS="2")
    (send,) = e2e.wait_sends(1, timeout=20)
    assert send.json["text"] == "Resposta: Oi"
    e2e.assert_no_more(sends=1)
    assert total(metrics(web), "wa_bursts_total", gateway="evolution") == 2  # decided again by the new owner
    second.terminate()


def test_metrics_token_guards_metrics(e2e: Harness) -> None:
    web = e2e.python_server(METRICS_TOKEN="metrics-token-1b2c")
    assert requests.get(web.url + "/metrics", timeout=5).status_code == 401
    wrong = requests.get(web.url + "/metrics", headers={"Authorization": "Bearer nope"}, timeout=5)
    assert wrong.status_code == 401
    assert "wa_workers_alive" in metrics(web, Authorization="Bearer metrics-token-1b2c")


def json_lines(server: ServerProcess) -> list[dict[str, object]]:
    lines = []
    for line in server.logs().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_json_logs_carry_one_correlation_id_from_webhook_to_send_and_no_private_data(e2e: Harness) -> None:
    web = e2e.gunicorn_server(2, WORKER_ENABLED="false", LOG_FORMAT="json")
    worker = e2e.spawn_worker_process(LOG_FORMAT="json")
    wait_until(lambda: e2e.workers_alive() == 1, timeout=15, what="the worker's heartbeat")
    texts = ["Oi, meu nome é Joana", "Meu CPF é 123.456.789-00", "Quanto custa o bolo?"]
    for n, text in enumerate(texts):
        assert web.post(upsert(text, msg_id=f"3EB0CORR{n:012d}")).status_code == 200
    e2e.wait_sends(1)
    e2e.assert_no_more(sends=1)
    time.sleep(0.2)  # the worker's last lines reach its log file

    web_lines, worker_lines = json_lines(web), json_lines(worker)
    received = [line for line in web_lines if str(line["message"]).startswith("received ")]
    assert len(received) == 3
    ids = {line["correlation_id"] for line in received}
    assert len(ids) == 1 and all(ids)
    (correlation_id,) = ids
    burst_lines = [line for line in worker_lines if line["correlation_id"] == correlation_id]
    messages = [str(line["message"]) for line in burst_lines]
    assert any(m.startswith("decision ") for m in messages) and any(m.startswith("reply sent ") for m in messages)
    assert all(line["chat"] == "evolution:loja-e2e:5511*****4321" for line in [*received, *burst_lines])
    assert {line["level"] for line in [*web_lines, *worker_lines]} <= {"INFO", "WARNING", "ERROR", "DEBUG"}
    for server in (web, worker):
        server.assert_logs_private(CUSTOMER_JID.split("@")[0], *texts, "Resposta:")
