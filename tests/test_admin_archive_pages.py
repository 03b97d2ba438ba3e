"""The panel's archive pages over HTTP (Flask's test client, the real Redis and PostgreSQL): the search, a chat's whole
archived history page by page with its notes, the LGPD export and the erasure (login, CSRF, the confirmation step),
and what each says when the archive is off or its database cannot be reached."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient

from archive.events import (
    dead_letter_event,
    decision_event,
    lifecycle_event,
    message_events,
    person_message_event,
    reply_part_event,
)
from components import Components
from memory import Turn
from models import ChatRef
from tests.conftest import free_port
from tests.test_console import ADMIN_TOKEN, csrf_of, log_in

CHAT = ChatRef(gateway="evolution", instance="loja", chat_id="5511987654321@s.whatsapp.net")
OTHER = ChatRef(gateway="evolution", instance="loja", chat_id="5521976543210@s.whatsapp.net")
HOSTILE = '<script>alert(1)</script><img src=x onerror="alert(2)">'
AT = 1_767_225_600.0  # 2026-01-01 00:00 UTC: 31/12/2025 21:00 in São Paulo


@pytest.fixture
def app_settings(postgres_url: str) -> dict[str, object]:
    return {"admin_token": ADMIN_TOKEN, "debounce_seconds": 60.0, "database_url": postgres_url}


def parts_of(client: FlaskClient) -> Components:
    return client.application.extensions["assistant"]


def flash_of(page: str) -> str:
    found = re.search(r'<div class="flash" role="status">(.*?)</div>', page, re.S)
    assert found, "the page shows no flash"
    return found.group(1)


def archive(client: FlaskClient, chat: ChatRef, texts: list[str], *, at: float = AT) -> None:
    """Write the customer's messages straight into PostgreSQL (the writer thread is off in these tests)."""
    records = [{"id": f"m{i}-{at}", "text": text, "at": at + i, "name": "Maria Souza"} for i, text in enumerate(texts)]
    store = parts_of(client).archive.store
    assert store is not None
    store.write(message_events(chat, records, now=at))


def test_search_finds_portuguese_words_and_links_each_result_to_its_chat(client: FlaskClient) -> None:
    archive(client, CHAT, ["Vocês entregam no domingo?", "Qual o preço do bolo?"])
    archive(client, OTHER, ["Preciso de uma entrega urgente"])
    log_in(client)
    assert "Arquivo" in client.get("/admin/").text  # in the nav

    page = client.get("/admin/search?q=entrega").text
    assert page.count('<tr class="result"') == 2
    assert "Vocês entregam no domingo?" in page and "Preciso de uma entrega urgente" in page
    assert "Qual o preço" not in page
    assert f'href="/admin/chats/{CHAT.key}"' in page and "Maria Souza" in page and "5511987654321" in page
    assert "Cliente:" in page and "31/12/2025 21:00" in page  # author, and the date in TIMEZONE
    assert "Nada encontrado" in client.get("/admin/search?q=pizza").text
    assert "<table" not in client.get("/admin/search").text


def test_the_chat_page_pages_through_the_whole_archive_oldest_first(client: FlaskClient) -> None:
    archive(client, CHAT, [f"mensagem {i:02d}" for i in range(60)])
    log_in(client)
    newest = client.get(f"/admin/chats/{CHAT.key}").text
    shown = re.findall(r"mensagem (\d\d)", newest)
    assert shown == [f"{i:02d}" for i in range(10, 60)]  # the newest 50, oldest to newest
    older = re.search(r'id="archive-older" href="([^"]+)"', newest)
    assert older and "before=" in older.group(1)

    first = client.get(older.group(1).replace("&amp;", "&")).text
    assert re.findall(r"mensagem (\d\d)", first) == [f"{i:02d}" for i in range(10)]
    assert 'id="archive-older"' not in first and 'id="archive-newest"' in first


def test_the_archive_shows_who_wrote_media_transcripts_and_notes(client: FlaskClient) -> None:
    store = parts_of(client).archive.store
    assert store is not None
    voice = {"id": "v1", "text": "", "at": AT, "media": {"kind": "audio", "voice": True}}
    store.write(
        [
            *message_events(CHAT, [voice], transcripts={"v1": "quero um bolo de cenoura"}, now=AT),
            reply_part_event(CHAT, reply_to="v1", index=0, text="Temos sim!", message_id="b1", at=AT + 1),
            decision_event(CHAT, kind="handoff_request", about="v2", at=AT + 2),
            lifecycle_event(CHAT, action="pause", about="panel-1", at=AT + 3, by="panel"),
            person_message_event(CHAT, text="Oi, aqui é a Carla.", message_id="h1", at=AT + 4, via="panel"),
            lifecycle_event(CHAT, action="resume", about="p2", at=AT + 5, by="phone"),
            decision_event(CHAT, kind="opt_out", about="v3", at=AT + 6),
            dead_letter_event(
                CHAT, about="v4", reply="Até amanhã", unsent=["Até amanhã"], error="HTTP 500", attempts=12, at=AT + 7
            ),
        ]
    )
    log_in(client)
    page = client.get(f"/admin/chats/{CHAT.key}").text
    section = page[page.index('id="arquivo"') :]
    expected = [
        "Cliente",
        "[mensagem de voz]",
        "Transcrição: quero um bolo de cenoura",
        "Assistente",
        "Temos sim!",
        "O cliente pediu para falar com uma pessoa.",
        "Bot pausado pelo painel.",
        "Atendente",
        "Oi, aqui é a Carla.",
        "Bot retomado pelo celular.",
        "O cliente pediu para não receber mais mensagens.",
        "Resposta não entregue após 12 tentativas (HTTP 500).",
    ]
    positions = [section.index(text) for text in expected]
    assert positions == sorted(positions), "not in order"


def test_customer_html_is_escaped_in_the_search_and_the_archive(client: FlaskClient) -> None:
    archive(client, CHAT, [f"entrega {HOSTILE}"])
    log_in(client)
    for path in ("/admin/search?q=entrega", f"/admin/chats/{CHAT.key}"):
        page = client.get(path).text
        assert "<script>alert" not in page and "<img src=x" not in page, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page, path


def test_export_downloads_everything_held_about_the_contact(client: FlaskClient) -> None:
    archive(client, CHAT, ["Vocês entregam no domingo?"])
    parts_of(client).history.append(CHAT, [Turn(role="user", text="Oi", at=time.time(), name="Maria Souza")])
    log_in(client)
    assert 'id="export"' in client.get(f"/admin/chats/{CHAT.key}").text

    response = client.get(f"/admin/chats/{CHAT.key}/export")
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert response.headers["Content-Disposition"].startswith('attachment; filename="contato-evolution-loja-5511')
    body = response.json
    assert body["chat"] == CHAT.key and [turn["text"] for turn in body["history"]] == ["Oi"]
    assert [row["text"] for row in body["archive"]] == ["Vocês entregam no domingo?"]


def test_erasing_asks_first_needs_the_csrf_token_and_says_what_went(client: FlaskClient) -> None:
    archive(client, CHAT, ["Vocês entregam no domingo?", "E no sábado?"])
    archive(client, OTHER, ["Outro cliente"])
    parts = parts_of(client)
    parts.history.append(CHAT, [Turn(role="user", text="Oi", at=time.time(), name="Maria Souza")])
    store = parts.archive.store
    assert store is not None
    token = log_in(client)

    confirm = client.get(f"/admin/chats/{CHAT.key}/erase").text
    assert "Não dá para desfazer" in confirm and 'id="confirm-erase"' in confirm and "Maria Souza" in confirm
    assert len(store.history(CHAT.key)) == 2  # asking is not erasing

    assert client.post(f"/admin/chats/{CHAT.key}/erase").status_code == 400  # no CSRF token
    assert len(store.history(CHAT.key)) == 2

    done = client.post(f"/admin/chats/{CHAT.key}/erase", data={"csrf_token": token})
    assert (done.status_code, done.headers["Location"]) == (302, "/admin/")
    flashed = client.get("/admin/").text
    assert "Dados do contato apagados: 2 eventos do arquivo" in flashed and "registro" in flashed
    assert store.history(CHAT.key) == [] and parts.history.recent(CHAT) == []
    assert len(store.history(OTHER.key)) == 1  # only that contact
    assert "Nada no arquivo para esta conversa." in client.get(f"/admin/chats/{CHAT.key}").text

    again = client.post(f"/admin/chats/{CHAT.key}/erase", data={"csrf_token": token}, follow_redirects=True)
    assert "do arquivo" not in flash_of(again.text)  # what is left is at most a cache of "not opted out"


@pytest.mark.parametrize("path", ["/admin/search", f"/admin/chats/{CHAT.key}/export", f"/admin/chats/{CHAT.key}/erase"])
def test_the_archive_pages_need_the_login(client: FlaskClient, path: str) -> None:
    assert client.get(path).headers["Location"].startswith("/admin/login?next=")


def test_an_erasure_without_a_session_erases_nothing(client: FlaskClient) -> None:
    archive(client, CHAT, ["Vocês entregam no domingo?"])
    csrf = csrf_of(client.get("/admin/login").text)  # so that only the login is missing
    response = client.post(f"/admin/chats/{CHAT.key}/erase", data={"csrf_token": csrf})
    assert response.status_code == 302 and "/admin/login" in response.headers["Location"]
    store = parts_of(client).archive.store
    assert store is not None and len(store.history(CHAT.key)) == 1


def test_without_database_url_the_pages_say_the_archive_is_off(make_app: Callable[..., Flask]) -> None:
    client = make_app(admin_token=ADMIN_TOKEN, database_url="").test_client()
    token = log_in(client)
    assert "O arquivo está desligado: defina <code>DATABASE_URL</code>" in client.get("/admin/search?q=oi").text
    assert "O arquivo está desligado" in client.get(f"/admin/chats/{CHAT.key}").text
    assert client.get(f"/admin/chats/{CHAT.key}/export").json["archive"] == "off"
    erased = client.post(f"/admin/chats/{CHAT.key}/erase", data={"csrf_token": token}, follow_redirects=True)
    assert "(o arquivo está desligado)" in erased.text


def test_while_postgresql_is_away_the_pages_say_so_and_nothing_is_erased(make_app: Callable[..., Flask]) -> None:
    """A database nobody listens on: each request waits for the pool's timeout (5 s), then says so."""
    client = make_app(admin_token=ADMIN_TOKEN, database_url=f"postgresql://127.0.0.1:{free_port()}/x").test_client()
    parts = client.application.extensions["assistant"]
    parts.history.append(CHAT, [Turn(role="user", text="Oi", at=time.time())])
    token = log_in(client)
    assert "O arquivo está indisponível agora" in client.get("/admin/search?q=entrega").text
    export = client.get(f"/admin/chats/{CHAT.key}/export")  # back to the chat page, not a file of it
    assert (export.status_code, export.headers["Location"]) == (302, f"/admin/chats/{CHAT.key}")
    erased = client.post(f"/admin/chats/{CHAT.key}/erase", data={"csrf_token": token}, follow_redirects=True)
    assert "nada foi apagado" in erased.text
    assert [turn.text for turn in parts.history.recent(CHAT)] == ["Oi"]


def test_a_reply_in_the_archive_shows_what_the_model_cost(client: FlaskClient) -> None:
    log_in(client)
    store = parts_of(client).archive.store
    assert store is not None
    usage = {"calls": [{"provider": "gemini", "model": "gemini-3-flash-preview"}], "input_tokens": 1200}
    usage |= {"output_tokens": 80, "cost_usd": 0.00084}
    part = reply_part_event(CHAT, reply_to="m1", index=0, text="Custa R$ 48.", message_id="X1", at=AT, usage=usage)
    store.write([part])
    page = client.get(f"/admin/chats/{CHAT.key}").text
    assert "Modelo: gemini gemini-3-flash-preview · 1.200 tokens de entrada, 80 de saída · US$ 0,0008" in page
