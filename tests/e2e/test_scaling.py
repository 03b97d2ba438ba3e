"""End-to-end with several processes on one Redis: gunicorn -w 4, and gunicorn plus `python webhook.py`."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tests.e2e.conftest import CUSTOMER_JID, Harness, ServerProcess, last_user_text, upsert


def test_gunicorn_four_workers_answer_a_burst_once(e2e: Harness) -> None:
    server = e2e.gunicorn_server(workers=4)
    texts = [f"Mensagem {n} da rajada" for n in range(1, 6)]
    server.burst(texts)
    (send,) = e2e.wait_sends(1)
    assert send.json["number"] == CUSTOMER_JID
    burst_text = last_user_text(e2e.prompts()[0])
    assert all(burst_text.count(text) == 1 for text in texts), burst_text
    e2e.assert_no_more(sends=1, prompts=1)


def test_gunicorn_twenty_concurrent_chats(e2e: Harness) -> None:
    debounce = 1.5
    server = e2e.gunicorn_server(workers=4, DEBOUNCE_SECONDS=debounce)
    chats = {f"55119{n:08d}@s.whatsapp.net": [f"chat {n} msg {m}" for m in range(1, 4)] for n in range(20)}

    def post_chat(jid: str) -> None:
        server.burst(chats[jid], jid=jid)

    with ThreadPoolExecutor(len(chats)) as pool:
        list(pool.map(post_chat, chats))

    sends = e2e.wait_sends(len(chats), timeout=15)
    replies = {send.json["number"]: send.json["text"] for send in sends}
    assert set(replies) == set(chats), "one reply per chat"
    for jid, texts in chats.items():
        assert all(text in replies[jid] for text in texts), (jid, replies[jid])
    e2e.assert_no_more(sends=len(chats), prompts=len(chats), seconds=2 * debounce)


def test_two_servers_on_one_redis_answer_once(e2e: Harness) -> None:
    gunicorn = e2e.spawn_gunicorn(workers=4)
    python = e2e.spawn_python()
    servers: list[ServerProcess] = [gunicorn.wait_ready(), python.wait_ready()]
    texts = [f"Parte {n} da mensagem" for n in range(1, 6)]
    for n, text in enumerate(texts):
        response = servers[n % 2].post(upsert(text))
        assert response.json()["status"] == "buffered", response.text

    (send,) = e2e.wait_sends(1)
    assert send.json["number"] == CUSTOMER_JID
    (prompt,) = e2e.prompts()
    burst_text = last_user_text(prompt)
    positions = [burst_text.find(text) for text in texts]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), burst_text
    e2e.assert_no_more(sends=1, prompts=1)
