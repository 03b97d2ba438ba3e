"""The console over HTTP (Flask's test client, the real Redis): who may open each page (the login, ADMIN_TOKEN unset,
the no-gateway demo), the session cookie, CSRF on every form, the Content-Security-Policy, and the simulator's
routes through the real pipeline (the adapter itself is tested with the other gateways in test_gateways.py)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from components import Components
from memory import Turn
from models import ChatRef
from simulator import chat_of
from tests.fakes import Canned, FakeEvolution

ADMIN_TOKEN = "console-admin-token-0b1d"
CHAT = ChatRef(gateway="evolution", instance="loja", chat_id="5511987654321@s.whatsapp.net")
NUMBER = "5511999990001"

# Every page of the panel and every form it posts to: (method, path).
PANEL_GETS = [
    "/admin/",
    "/admin/chats/rows",
    f"/admin/chats/{CHAT.key}",
    f"/admin/chats/{CHAT.key}/body",
    "/admin/deliveries",
    "/admin/knowledge",
    "/admin/status",
]
PANEL_POSTS = [
    f"/admin/chats/{CHAT.key}/action",
    "/admin/deliveries/abc123",
    "/admin/knowledge",
]
SIMULATOR_API = [
    ("GET", f"/simulator/api/chats/{NUMBER}"),
    ("POST", "/simulator/api/messages"),
    ("POST", f"/simulator/api/chats/{NUMBER}/now"),
]


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf-token" content="([^"]+)"', page)
    assert found, "the page carries no CSRF token"
    return found.group(1)


def log_in(client: FlaskClient, token: str = ADMIN_TOKEN) -> str:
    """Log in through the form; returns the CSRF token the pages then carry."""
    page = client.get("/admin/login").text
    response = client.post("/admin/login", data={"token": token, "csrf_token": csrf_of(page)})
    assert response.status_code == 302, response.text
    return csrf_of(client.get("/admin/").text)


@pytest.fixture
def app_settings() -> dict[str, object]:
    """A real gateway (the fake Evolution) and ADMIN_TOKEN: everything behind the login."""
    return {"admin_token": ADMIN_TOKEN, "debounce_seconds": 60.0}


def parts_of(app: Flask) -> Components:
    return app.extensions["assistant"]


# ----- who may open what --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PANEL_GETS)
def test_a_panel_page_without_a_session_leads_to_the_login(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/admin/login?next=")


@pytest.mark.parametrize("path", PANEL_POSTS)
def test_a_panel_form_without_a_session_changes_nothing(client: FlaskClient, path: str) -> None:
    page = client.get("/admin/login").text  # a CSRF token, so that only the login is missing
    response = client.post(path, data={"action": "pause", "csrf_token": csrf_of(page)})
    assert response.status_code == 302 and "/admin/login" in response.headers["Location"]
    assert parts_of(client.application).conversations.status(CHAT).state == ""


@pytest.mark.parametrize(("method", "path"), SIMULATOR_API)
def test_the_simulator_api_needs_the_login_once_a_gateway_is_configured(
    client: FlaskClient, method: str, path: str
) -> None:
    csrf = csrf_of(client.get("/admin/login").text)  # so that only the login is missing
    response = client.open(path, method=method, json={"number": NUMBER, "text": "oi"}, headers={"X-CSRFToken": csrf})
    assert response.status_code == 401
    assert response.json == {"error": "unauthorized", "detail": "log in at /admin/login"}
    assert client.get("/simulator").status_code == 302


@pytest.mark.parametrize(
    ("method", "path"),
    [*[("GET", p) for p in [*PANEL_GETS, "/admin/login", "/simulator"]], ("POST", "/admin/login"), *SIMULATOR_API],
)
def test_without_admin_token_the_admin_side_is_not_there(
    make_app: Callable[..., Flask], method: str, path: str
) -> None:
    client = make_app(admin_token="").test_client()  # a gateway is configured (the fake Evolution)
    assert client.open(path, method=method, json={}).status_code == 404


@pytest.mark.parametrize("path", PANEL_GETS)
def test_the_no_gateway_demo_opens_the_simulator_but_not_the_panel(make_app: Callable[..., Flask], path: str) -> None:
    client = make_app(admin_token="", evolution_api="").test_client()
    home = client.get("/")
    assert (home.status_code, home.headers["Location"]) == (302, "/simulator")
    page = client.get("/simulator")
    assert page.status_code == 200 and "Painel: defina <code>ADMIN_TOKEN</code>" in page.text
    assert client.get(f"/simulator/api/chats/{NUMBER}").status_code == 200
    assert client.get(path).status_code == 404


def test_simulator_enabled_false_turns_it_off_everywhere(make_app: Callable[..., Flask]) -> None:
    client = make_app(admin_token=ADMIN_TOKEN, evolution_api="", simulator_enabled=False).test_client()
    log_in(client)
    assert client.get("/simulator").status_code == 404
    assert client.post("/simulator/api/messages", json={"number": NUMBER, "text": "oi"}).status_code == 404
    assert client.get("/").headers["Location"] == "/admin/"
    assert "simulator" not in parts_of(client.application).gateways


# ----- the login ----------------------------------------------------------------------------------------


def test_a_wrong_token_is_refused_slowly_and_counted(client: FlaskClient) -> None:
    page = client.get("/admin/login").text
    started = time.monotonic()
    response = client.post("/admin/login", data={"token": "guess", "csrf_token": csrf_of(page)})
    assert time.monotonic() - started >= 1.0
    assert response.status_code == 401 and "Token incorreto" in response.text
    assert client.get("/admin/").status_code == 302
    assert client.get("/health").json["counters"]["admin_login_failures"] == 1


def test_the_session_cookie_is_httponly_lax_and_secure_over_https(client: FlaskClient) -> None:
    page = client.get("/admin/login").text
    plain = client.post("/admin/login", data={"token": ADMIN_TOKEN, "csrf_token": csrf_of(page)})
    cookie = plain.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie

    https, site = client.application.test_client(), "https://loja.example"
    page = https.get("/admin/login", base_url=site).text
    form = {"token": ADMIN_TOKEN, "csrf_token": csrf_of(page)}
    # Over HTTPS, Flask-WTF also wants the Referer of this site (browsers send it: Referrer-Policy same-origin).
    assert https.post("/admin/login", data=form, base_url=site).status_code == 400
    secure = https.post("/admin/login", data=form, base_url=site, headers={"Referer": f"{site}/admin/login"})
    assert secure.status_code == 302 and "Secure" in secure.headers["Set-Cookie"]


def test_login_goes_back_to_the_page_asked_for_but_never_to_another_host(client: FlaskClient) -> None:
    def form() -> dict[str, str]:  # a login starts a new session, and a new CSRF token with it
        return {"token": ADMIN_TOKEN, "csrf_token": csrf_of(client.get("/admin/login").text)}

    back = client.post("/admin/login?next=/admin/deliveries", data=form())
    assert back.headers["Location"] == "/admin/deliveries"
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        away = client.post("/admin/login", query_string={"next": target}, data=form())
        assert away.headers["Location"] == "/admin/", target


def test_logout_ends_the_session(client: FlaskClient) -> None:
    token = log_in(client)
    assert client.get("/admin/").status_code == 200
    assert client.post("/admin/logout", data={"csrf_token": token}).status_code == 302
    assert client.get("/admin/").status_code == 302


def test_a_new_admin_token_logs_everyone_out(make_app: Callable[..., Flask], client: FlaskClient) -> None:
    log_in(client)
    cookie = client.get_cookie("session")
    assert cookie is not None
    other = make_app(admin_token="another-token", debounce_seconds=60.0).test_client()
    other.set_cookie("session", cookie.value)  # same SECRET_KEY (kept in Redis), different ADMIN_TOKEN
    assert other.get("/admin/").status_code == 302


def test_the_generated_secret_key_is_shared_by_every_process(make_app: Callable[..., Flask]) -> None:
    first, second = make_app(admin_token=ADMIN_TOKEN), make_app(admin_token=ADMIN_TOKEN)
    assert first.secret_key and first.secret_key == second.secret_key
    assert make_app(admin_token=ADMIN_TOKEN, secret_key="set-by-the-owner").secret_key == "set-by-the-owner"


# ----- CSRF and what the pages may load ----------------------------------------------------------------


@pytest.mark.parametrize("path", [*PANEL_POSTS, "/admin/logout"])
def test_a_form_post_without_its_csrf_token_is_refused(client: FlaskClient, path: str) -> None:
    log_in(client)
    response = client.post(path, data={"action": "pause"})
    assert response.status_code == 400
    assert parts_of(client.application).conversations.status(CHAT).state == ""
    assert client.get("/admin/").status_code == 200  # still logged in


def test_the_login_form_needs_its_csrf_token_too(client: FlaskClient) -> None:
    assert client.post("/admin/login", data={"token": ADMIN_TOKEN}).status_code == 400


def test_a_post_no_route_takes_gets_its_404_or_405_not_a_csrf_error(client: FlaskClient) -> None:
    assert client.post("/no-such-page").status_code == 404
    assert client.post("/health").status_code == 405


def test_the_json_api_keeps_its_bearer_token_and_needs_no_csrf(client: FlaskClient) -> None:
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert client.post(f"/admin/api/chats/{CHAT.key}/pause", headers=auth).status_code == 200
    assert client.post(f"/admin/api/chats/{CHAT.key}/resume").status_code == 401


def test_pages_say_they_load_nothing_from_another_host(client: FlaskClient) -> None:
    log_in(client)
    for path in ("/admin/login", "/admin/", "/admin/status", "/static/app.css"):
        policy = client.get(path).headers["Content-Security-Policy"]
        assert "default-src 'self'" in policy and "script-src 'self'" in policy
        assert "unsafe-inline" not in policy and "http" not in policy
    page = client.get("/admin/").text
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "<script>" not in page  # no inline script: the policy would block it


# ----- the panel's pages and forms ----------------------------------------------------------------------


def test_the_chat_list_shows_each_chat_with_its_name_state_and_pending_burst(client: FlaskClient) -> None:
    parts = parts_of(client.application)
    parts.history.append(CHAT, [Turn(role="user", text="Oi", at=time.time() - 60, name="Maria Souza")])
    other = ChatRef(gateway="evolution", instance="loja", chat_id="5521976543210@s.whatsapp.net")
    parts.conversations.business_action(other, action="pause", seconds=float("inf"), now=time.time())
    log_in(client)

    rows = client.get("/admin/chats/rows").text
    assert "Maria Souza" in rows and "5511987654321" in rows and "5521976543210" in rows
    assert "bot pausado" in rows and "até retomar" in rows
    assert "Maria" in client.get("/admin/chats/rows?q=maria").text
    assert "5521976543210" not in client.get("/admin/chats/rows?q=maria").text
    assert "5511987654321" not in client.get("/admin/chats/rows?state=paused").text
    assert "Nenhuma conversa" in client.get("/admin/chats/rows?gateway=meta").text


def test_customer_html_is_escaped_in_every_page(client: FlaskClient) -> None:
    hostile = '<script>alert(1)</script><img src=x onerror="alert(2)">'
    parts = parts_of(client.application)
    parts.history.append(CHAT, [Turn(role="user", text=hostile, at=time.time(), name=hostile)])
    log_in(client)
    for path in ("/admin/chats/rows", f"/admin/chats/{CHAT.key}", f"/admin/chats/{CHAT.key}/body"):
        page = client.get(path).text
        assert "<script>alert" not in page and "<img src=x" not in page, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page, path


def test_pause_resume_and_close_from_the_chat_page(client: FlaskClient) -> None:
    token = log_in(client)
    action = f"/admin/chats/{CHAT.key}/action"
    conversations = parts_of(client.application).conversations
    client.post(action, data={"action": "pause", "minutes": "30", "csrf_token": token})
    status = conversations.status(CHAT)
    assert status.state == "paused" and status.paused_until == pytest.approx(time.time() + 1800, abs=5)
    client.post(action, data={"action": "resume", "csrf_token": token})
    assert conversations.status(CHAT).state == "open"
    page = client.post(action, data={"action": "close", "csrf_token": token}, follow_redirects=True)
    assert conversations.status(CHAT).state == "closed" and "Conversa encerrada." in page.text
    for minutes in ("abc", "-5", "1e999", ""):  # anything but a positive number = until resumed
        client.post(action, data={"action": "pause", "minutes": minutes, "csrf_token": token})
        assert conversations.status(CHAT).paused_until == float("inf"), minutes


def test_replying_from_the_chat_page_sends_through_the_gateway(
    client: FlaskClient, fake_evolution: FakeEvolution
) -> None:
    token = log_in(client)
    page = client.post(
        f"/admin/chats/{CHAT.key}/action",
        data={"action": "reply", "text": "Oi, aqui é a Ana.", "csrf_token": token},
        follow_redirects=True,
    )
    assert "o bot ficou pausado" in page.text
    (send,) = fake_evolution.sends()
    assert send.json["text"] == "Oi, aqui é a Ana."
    assert parts_of(client.application).conversations.status(CHAT).state == "paused"

    fake_evolution.queue(Canned(400, {"error": "number not on WhatsApp"}))
    failed = client.post(
        f"/admin/chats/{CHAT.key}/action",
        data={"action": "reply", "text": "Segunda tentativa", "csrf_token": token},
        follow_redirects=True,
    )
    assert "Não foi possível enviar" in failed.text


@pytest.mark.parametrize("raw", ["nope", "evolution:loja", "telegram:x:y", "evolution::5511"])
def test_a_chat_page_for_no_such_chat_is_404(client: FlaskClient, raw: str) -> None:
    log_in(client)
    assert client.get(f"/admin/chats/{raw}").status_code == 404


def test_a_dead_letter_is_retried_and_discarded_from_the_page(
    client: FlaskClient, fake_evolution: FakeEvolution
) -> None:
    parts = parts_of(client.application)
    for letter_id, reply in (("L1", "Primeira"), ("L2", "Segunda")):
        parts.buffer.put_dead_letter(
            {"id": letter_id, "chat": CHAT.key, "reply": reply, "unsent": [reply], "error": "HTTP 500", "attempts": 12}
        )
    token = log_in(client)
    page = client.get("/admin/deliveries").text
    ids = re.findall(r'<tr class="letter" data-id="([^"]+)"', page)
    assert len(ids) == 2 and "HTTP 500" in page

    retried = client.post(f"/admin/deliveries/{ids[0]}", data={"action": "retry", "csrf_token": token})
    assert retried.status_code == 302
    assert [s.json["text"] for s in fake_evolution.sends()] in (["Primeira"], ["Segunda"])
    client.post(f"/admin/deliveries/{ids[1]}", data={"action": "discard", "csrf_token": token})
    assert parts.buffer.dead_letters() == []
    gone = client.post(f"/admin/deliveries/{ids[1]}", data={"action": "retry", "csrf_token": token})
    assert "Essa entrega já não existe." in client.get(gone.headers["Location"]).text


def test_the_status_page_asks_each_gateway_only_on_demand(client: FlaskClient, fake_evolution: FakeEvolution) -> None:
    log_in(client)
    assert "Redis" in client.get("/admin/status").text
    assert fake_evolution.received() == []
    checked = client.get("/admin/status?check=1").text
    asked = [r.path for r in fake_evolution.received()]
    assert asked and all(p.startswith("/instance/connectionState/") for p in asked)
    assert "evolution" in checked


def test_the_knowledge_page_searches_and_reloads(make_app: Callable[..., Flask], tmp_path: Any) -> None:
    folder = tmp_path / "kb"
    folder.mkdir()
    (folder / "entregas.md").write_text("# Entregas\nEntregamos no centro em até 2 horas.\n", encoding="utf-8")
    client = make_app(admin_token=ADMIN_TOKEN, knowledge_dir=str(folder)).test_client()
    token = log_in(client)
    page = client.get("/admin/knowledge?q=voces entregam no centro").text
    assert "entregas.md" in page and "Entregamos no centro" in page
    reloaded = client.post("/admin/knowledge", data={"csrf_token": token}, follow_redirects=True)
    assert "Base de conhecimento recarregada." in reloaded.text


# ----- the simulator's routes ---------------------------------------------------------------------------


@pytest.fixture
def demo(make_app: Callable[..., Flask]) -> FlaskClient:
    """No gateway configured: the simulator is open to whoever reaches the server (the two-command demo)."""
    return make_app(
        admin_token="", evolution_api="", debounce_seconds=60.0, debounce_max_wait_seconds=120.0
    ).test_client()


def post(client: FlaskClient, body: Any) -> Any:
    csrf = csrf_of(client.get("/simulator").text)
    return client.post("/simulator/api/messages", json=body, headers={"X-CSRFToken": csrf})


def test_a_simulated_burst_is_buffered_deduplicated_and_answered_by_the_worker(demo: FlaskClient) -> None:
    parts = parts_of(demo.application)
    first = post(demo, {"number": NUMBER, "name": "Maria", "text": "Oi", "id": "m1"})
    assert (first.status_code, first.json["status"]) == (200, "buffered")
    assert post(demo, {"number": NUMBER, "text": "Oi", "id": "m1"}).json["duplicates"] == 1  # a retried post
    post(demo, {"number": NUMBER, "text": "Queria saber o preço", "id": "m2"})

    state = demo.get(f"/simulator/api/chats/{NUMBER}").json
    assert [e["role"] for e in state["entries"]] == ["customer", "customer"]
    assert state["pending"]["messages"] == 2 and state["pending"]["deadline"] > state["now"] + 50

    assert demo.post(
        f"/simulator/api/chats/{NUMBER}/now", headers={"X-CSRFToken": csrf_of(demo.get("/simulator").text)}
    ).json == {"status": "due"}
    parts.worker.run_once(wait=True)
    later = demo.get(f"/simulator/api/chats/{NUMBER}?since=2").json
    (reply,) = later["entries"]
    assert reply["role"] == "bot" and reply["text"].startswith("Resposta:")
    assert later["pending"] is None


def test_the_simulator_api_refuses_what_the_page_never_sends(demo: FlaskClient) -> None:
    for body in ({}, {"number": "12", "text": "oi"}, {"number": NUMBER}, {"number": NUMBER, "text": "  "}, [1]):
        response = post(demo, body)
        assert response.status_code == 400, body
        assert response.json["error"]
    assert demo.get("/simulator/api/chats/abc").status_code == 404
    assert demo.post("/simulator/api/messages", json={"number": NUMBER, "text": "oi"}).status_code == 400  # CSRF


def test_playing_the_business_side_pauses_the_bot(demo: FlaskClient) -> None:
    parts = parts_of(demo.application)
    post(demo, {"number": NUMBER, "text": "Tem bolo de cenoura?", "id": "c1"})
    post(demo, {"number": NUMBER, "text": "Tem sim, acabou de sair!", "id": "p1", "as": "person"})
    assert parts.conversations.status(chat_of(NUMBER)).state == "paused"
    roles = [e["role"] for e in demo.get(f"/simulator/api/chats/{NUMBER}").json["entries"]]
    assert roles == ["customer", "person"]
