"""End-to-end: the knowledge base in real server processes. Grounded prompts at the fake Gemini, a changed file
reaching the next answer within RAG_WATCH_INTERVAL + 1 s in `python webhook.py` and in every gunicorn worker,
POST /reload-context reloading every worker, and the admin endpoints' access rules over HTTP.
"""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from knowledge import GROUNDING_RULE
from tests.e2e.conftest import CUSTOMER_JID, Harness, ServerProcess

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "knowledge"
ADMIN_TOKEN = "e2e-admin-token-3c7d41"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
WATCH_INTERVAL = 0.5
OLD_PRICE, NEW_PRICE = "R$ 48,00", "R$ 52,00"


def knowledge_copy(tmp_path: Path) -> Path:
    target = tmp_path / "conhecimento"
    shutil.copytree(FIXTURES, target)
    return target


def change_carrot_cake_price(kb_dir: Path) -> None:
    """Rewrite produtos/bolos.md with the new price (a new file renamed over the old, as editors save)."""
    bolos = kb_dir / "produtos" / "bolos.md"
    draft = bolos.with_name(".bolos.md.tmp")
    draft.write_text(bolos.read_text(encoding="utf-8").replace(OLD_PRICE, NEW_PRICE), encoding="utf-8")
    draft.replace(bolos)


def system_text(prompt: dict[str, Any]) -> str:
    return "\n".join(part.get("text", "") for part in prompt["systemInstruction"]["parts"])


def knowledge_env(kb_dir: Path, **overrides: Any) -> dict[str, Any]:
    return {
        "KNOWLEDGE_DIR": str(kb_dir),
        "RAG_WHOLE_MAX_CHARS": "0",  # the test base is small: force retrieval, the path that must find the chunk
        "RAG_WATCH_INTERVAL": str(WATCH_INTERVAL),
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "BUSINESS_NAME": "Doceria Flor de Canela",
        **overrides,
    }


def carrot_cake_preview(server: ServerProcess) -> tuple[float, int, str]:
    """(time the request started, pid that answered, price it retrieves for the carrot cake)."""
    started = time.monotonic()
    response = requests.get(
        server.url + "/context/preview", params={"q": "bolo de cenoura", "n": "0"}, headers=AUTH, timeout=5
    )
    assert response.status_code == 200, response.text
    body = response.json()
    text = "\n".join(hit["text"] for hit in body["hits"])
    price = NEW_PRICE if NEW_PRICE in text else OLD_PRICE if OLD_PRICE in text else "none"
    return started, body["pid"], price


def worker_pids(server: ServerProcess, workers: int, timeout: float = 15.0) -> set[int]:
    """Every gunicorn worker's pid, found by asking /context/preview until each has answered."""
    pids: set[int] = set()
    deadline = time.monotonic() + timeout
    with ThreadPoolExecutor(workers * 2) as pool:
        while len(pids) < workers and time.monotonic() < deadline:
            pids |= {pid for _, pid, _ in pool.map(lambda _: carrot_cake_preview(server), range(workers * 4))}
    assert len(pids) == workers, f"only {len(pids)} of {workers} workers answered within {timeout}s"
    return pids


def assert_every_worker_updates(server: ServerProcess, pids: set[int], changed_at: float) -> None:
    """Poll all workers: none may show the old price on a request started later than interval + 1 s after the
    change, and each must be seen with the new one."""
    deadline = changed_at + WATCH_INTERVAL + 1
    updated: dict[int, float] = {}
    give_up = deadline + 15
    with ThreadPoolExecutor(len(pids) * 2) as pool:
        while set(updated) != pids and time.monotonic() < give_up:
            for started, pid, price in pool.map(lambda _: carrot_cake_preview(server), range(len(pids) * 2)):
                assert pid in pids, f"unknown worker {pid}"
                if price == NEW_PRICE:
                    updated.setdefault(pid, started - changed_at)
                else:
                    assert started < deadline, f"worker {pid} still had {price} {started - changed_at:.2f}s after"
    assert set(updated) == pids, f"workers never seen updated: {pids - set(updated)}"


# ----- grounded prompts and reload in one process -----------------------------------------------------------


def test_prompt_is_grounded_and_follows_a_changed_file(e2e: Harness, tmp_path: Path) -> None:
    kb_dir = knowledge_copy(tmp_path)
    server = e2e.python_server(**knowledge_env(kb_dir))
    server.burst(["Oi!", "qnto custa o bolo de cenoura com cobertura??"])
    e2e.wait_sends(1)
    (prompt,) = e2e.prompts()
    system = system_text(prompt)
    assert "A empresa se chama Doceria Flor de Canela." in system
    assert GROUNDING_RULE in system
    assert "--- fonte: produtos/bolos.md | Bolos > Bolos caseiros" in system
    assert f"Bolo de cenoura com cobertura de chocolate: {OLD_PRICE}" in system

    change_carrot_cake_price(kb_dir)
    changed_at = time.monotonic()
    while True:  # the process's own view, polled: it must turn within the interval + 1 s
        started, pid, price = carrot_cake_preview(server)
        assert pid == server.proc.pid  # type: ignore[union-attr]
        if price == NEW_PRICE:
            break
        assert started - changed_at < WATCH_INTERVAL + 1, "the change was not picked up in time"
        time.sleep(0.05)
    server.burst(["e o bolo de cenoura, qnto ta agora?"])
    e2e.wait_sends(2)
    system = system_text(e2e.prompts()[1])
    assert f"Bolo de cenoura com cobertura de chocolate: {NEW_PRICE}" in system
    assert OLD_PRICE not in system


def test_admin_endpoints_over_http(e2e: Harness, tmp_path: Path) -> None:
    kb_dir = knowledge_copy(tmp_path)
    server = e2e.python_server(**knowledge_env(kb_dir, RAG_AUTO_RELOAD="false"))
    assert requests.get(server.url + "/context/preview", timeout=5).status_code == 401
    wrong = {"Authorization": "Bearer e2e-admin-token-errado"}
    assert requests.post(server.url + "/reload-context", headers=wrong, timeout=5).status_code == 401
    bad = requests.get(server.url + "/context/preview", params={"n": "mil"}, headers=AUTH, timeout=5)
    assert bad.status_code == 400
    preview = requests.get(server.url + "/context/preview", params={"n": "40"}, headers=AUTH, timeout=5).json()
    assert (len(preview["files"]), len(preview["preview"]), preview["mode"]) == (23, 40, "retrieval")

    change_carrot_cake_price(kb_dir)
    time.sleep(WATCH_INTERVAL * 2)
    assert carrot_cake_preview(server)[2] == OLD_PRICE  # RAG_AUTO_RELOAD=false: nothing moves by itself
    reloaded = requests.post(server.url + "/reload-context", headers=AUTH, timeout=5)
    assert reloaded.status_code == 200 and reloaded.json()["status"] == "reloaded"
    assert carrot_cake_preview(server)[2] == NEW_PRICE
    server.assert_logs_private(ADMIN_TOKEN, "e2e-admin-token-errado", CUSTOMER_JID.split("@")[0])

    disabled = e2e.python_server(**knowledge_env(kb_dir, ADMIN_TOKEN=""))
    assert requests.get(disabled.url + "/context/preview", headers=AUTH, timeout=5).status_code == 404
    assert requests.post(disabled.url + "/reload-context", headers=AUTH, timeout=5).status_code == 404


# ----- every gunicorn worker --------------------------------------------------------------------------------


def test_every_gunicorn_worker_picks_up_a_changed_file(e2e: Harness, tmp_path: Path) -> None:
    workers = 3
    kb_dir = knowledge_copy(tmp_path)
    server = e2e.gunicorn_server(workers, **knowledge_env(kb_dir))
    pids = worker_pids(server, workers)

    change_carrot_cake_price(kb_dir)
    changed_at = time.monotonic()
    assert_every_worker_updates(server, pids, changed_at)

    # And the answers: bursts from several chats, claimed by whichever workers, all get the new price.
    chats = [f"55119{n:08d}@s.whatsapp.net" for n in range(6)]
    for jid in chats:
        server.burst(["quanto custa o bolo de cenoura?"], jid=jid)
    e2e.wait_sends(len(chats))
    for prompt in e2e.prompts():
        system = system_text(prompt)
        assert NEW_PRICE in system and OLD_PRICE not in system


def test_reload_context_reloads_every_gunicorn_worker(e2e: Harness, tmp_path: Path) -> None:
    workers = 3
    kb_dir = knowledge_copy(tmp_path)
    server = e2e.gunicorn_server(workers, **knowledge_env(kb_dir, RAG_AUTO_RELOAD="false"))
    pids = worker_pids(server, workers)

    change_carrot_cake_price(kb_dir)
    time.sleep(WATCH_INTERVAL * 2)
    assert {carrot_cake_preview(server)[2] for _ in range(workers * 3)} == {OLD_PRICE}  # auto-reload is off

    response = requests.post(server.url + "/reload-context", headers=AUTH, timeout=10)
    changed_at = time.monotonic()
    assert response.status_code == 200, response.text
    assert response.json()["pid"] in pids and response.json()["all_processes"] is True
    assert_every_worker_updates(server, pids, changed_at)
