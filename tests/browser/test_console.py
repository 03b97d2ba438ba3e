"""The console in a real browser: the WhatsApp simulator (a burst becomes one reply, media, the countdown) and the
owner's panel (login, the chat list, replying as a person, resuming, a failed delivery retried), with what a page
must never do: run a customer's text as HTML, or act on a POST that lacks its CSRF token.

Each test starts `python webhook.py` against the fake Gemini and, where a real gateway is at stake, the fake
Evolution; the screenshots in docs/screenshots/ (embedded in the README) are taken here.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser.conftest import WAIT_SECONDS, Console
from tests.e2e.conftest import CUSTOMER_JID, Harness, assert_stays, wait_until
from tests.fakes import Canned, Recorded
from tests.media_samples import png

ADMIN_TOKEN = "browser-admin-token-5c1e9a"
NUMBER = "5511999990001"
DEBOUNCE = 3.0
DESCRIPTION = "Vi a foto: uma caneca laranja."
NO_GATEWAY = {"EVOLUTION_API": "", "AUTHENTICATION_API_KEY": "", "DEBOUNCE_SECONDS": str(DEBOUNCE)}
PANEL = {"ADMIN_TOKEN": ADMIN_TOKEN, "DEBOUNCE_SECONDS": "1"}  # and the fake Evolution: a real gateway
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert("y")>'


# ----- what the pages are driven with -------------------------------------------------------------------


def bot_bubbles(console: Console) -> list[str]:
    return [b.text for b in console.driver.find_elements(By.CSS_SELECTOR, "#bubbles .bubble.bot .text")]


def add_customer(console: Console, name: str, number: str) -> None:
    console.wait_for("#customer-name").send_keys(name)
    console.driver.find_element(By.ID, "customer-number").send_keys(number)
    console.driver.find_element(By.ID, "add-customer").click()
    console.wait_for_text("#chat-title", number)


def type_message(console: Console, text: str) -> None:
    box = console.wait_for("#message")
    box.send_keys(text, Keys.ENTER)
    console.wait_for_text("#bubbles", text)


def log_in(console: Console, token: str = ADMIN_TOKEN, *, here: bool = False, refused: bool = False) -> None:
    """Log in on /admin/login, or on the login page the browser was sent to (`here`, keeping its `next`), and wait
    until the browser has left the login page (the session cookie is set), unless the token is to be `refused`."""
    if not here:
        console.open("/admin/login")
    console.wait_for("#token").send_keys(token)
    console.driver.find_element(By.ID, "login").click()
    if not refused:
        WebDriverWait(console.driver, WAIT_SECONDS).until(lambda driver: "/admin/login" not in driver.current_url)


def assert_no_dialog(console: Console) -> None:
    try:
        alert = console.driver.switch_to.alert
    except NoAlertPresentException:
        return
    text = alert.text
    alert.dismiss()
    raise AssertionError(f"the page opened a dialog: {text!r}")


def prompt_text(prompt: dict[str, Any]) -> str:
    return " ".join(part.get("text", "") for content in prompt["contents"] for part in content["parts"])


# ----- the simulator ------------------------------------------------------------------------------------


def test_three_messages_become_one_reply_with_a_countdown(console: Console) -> None:
    """The first-run demo: no gateway, `/` opens the simulator with no login, a burst gets one reply."""
    console.start(**NO_GATEWAY)
    console.open("/")
    console.wait_for("#simulator")
    assert console.driver.current_url.endswith("/simulator")

    add_customer(console, "Maria", NUMBER)
    for text in ("Oi", "Tudo bem?", "Queria saber o preço do bolo"):
        type_message(console, text)
    seconds = int(console.wait_for("#countdown #seconds").text)
    assert 0 <= seconds <= DEBOUNCE
    console.screenshot("simulator-countdown")

    console.wait_for_text("#bubbles .bubble.bot", "Resposta:", timeout=DEBOUNCE + 10)
    (prompt,) = console.harness.prompts()
    assert all(t in prompt_text(prompt) for t in ("Oi", "Tudo bem?", "Queria saber o preço do bolo"))
    assert_stays(lambda: len(bot_bubbles(console)), 1, seconds=1.5, what="reply bubbles")
    customer = [b.text for b in console.driver.find_elements(By.CSS_SELECTOR, "#bubbles .bubble.customer .text")]
    assert customer == ["Oi", "Tudo bem?", "Queria saber o preço do bolo"]  # each once, in order
    assert console.wait_for("#countdown", visible=False).get_attribute("hidden") is not None
    console.screenshot("simulator")
    assert not [e for e in console.browser_log() if e["level"] == "SEVERE"], console.browser_log()


def test_answer_now_skips_the_wait(console: Console) -> None:
    console.start(**{**NO_GATEWAY, "DEBOUNCE_SECONDS": "120"})
    console.open("/simulator")
    add_customer(console, "João", "5511999990002")
    type_message(console, "Vocês abrem sábado?")
    console.wait_for("#countdown")
    console.driver.find_element(By.ID, "answer-now").click()
    console.wait_for_text("#bubbles .bubble.bot", "Resposta:", timeout=10)


def test_an_attached_image_reaches_gemini_and_the_reply_describes_it(console: Console, tmp_path: Path) -> None:
    photo = tmp_path / "caneca.png"
    photo.write_bytes(png(8, 8, (250, 120, 0)))
    seen: list[tuple[str, str]] = []

    def describe(recorded: Recorded) -> str:
        parts = recorded.json["contents"][-1]["parts"]
        seen.extend(
            (p["inlineData"].get("mimeType") or p["inlineData"]["mime_type"], p["inlineData"]["data"])
            for p in parts
            if "inlineData" in p
        )
        # With media, the model answers JSON: the reply and what each item was (kept in the history).
        return json.dumps({"reply": DESCRIPTION if seen else "Sem imagem.", "media": [{"n": 1, "text": "Caneca"}]})

    console.harness.gemini.reply_for = describe
    console.start(**{**NO_GATEWAY, "DEBOUNCE_SECONDS": "1"})
    console.open("/simulator")
    add_customer(console, "Ana", "5511999990003")
    console.driver.find_element(By.ID, "attach").send_keys(str(photo))
    console.wait_for_text("#attachment", "caneca.png")
    type_message(console, "Tem essa caneca?")

    console.wait_for_text("#bubbles .bubble.customer .media", "[imagem]")
    console.wait_for_text("#bubbles .bubble.bot", DESCRIPTION, timeout=10)
    assert [mime for mime, _ in seen] == ["image/png"]


def test_a_script_typed_by_a_customer_is_shown_as_text(console: Console) -> None:
    console.start(**{**NO_GATEWAY, "DEBOUNCE_SECONDS": "1", "ADMIN_TOKEN": ADMIN_TOKEN})
    console.open("/simulator")
    add_customer(console, "Teste", "5511999990004")
    type_message(console, HOSTILE)
    console.wait_for_text("#bubbles .bubble.bot", "Resposta:", timeout=10)

    assert_no_dialog(console)
    customer = console.driver.find_elements(By.CSS_SELECTOR, "#bubbles .bubble.customer .text")
    assert [b.text for b in customer] == [HOSTILE]
    assert not console.driver.find_elements(By.CSS_SELECTOR, "#bubbles script, #bubbles img")

    log_in(console)
    console.open("/admin/chats/simulator:console:5511999990004@sim")
    console.wait_for_text("#chat-body", HOSTILE)
    assert_no_dialog(console)
    assert not console.driver.find_elements(By.CSS_SELECTOR, "#chat-body script, #chat-body img")


# ----- the panel ----------------------------------------------------------------------------------------


def test_a_wrong_token_is_refused_and_the_right_one_opens_the_panel(console: Console) -> None:
    console.start(**PANEL)
    console.open("/admin/")
    console.wait_for("#token")
    assert "/admin/login" in console.driver.current_url  # sent to log in first
    console.screenshot("admin-login")

    started = time.monotonic()
    log_in(console, "not-the-token", refused=True)
    assert "Token incorreto" in console.wait_for("#login-error").text
    assert time.monotonic() - started >= 1.0  # a failed login costs a second
    assert not [c for c in console.driver.get_cookies() if c["name"] == "session" and "logged" in c["value"]]
    console.open("/admin/deliveries")
    console.wait_for("#token")  # still not in

    log_in(console)
    console.wait_for("table.chats")
    assert console.driver.current_url.endswith("/admin/")


def test_replying_as_a_person_pauses_the_bot_until_resumed(console: Console) -> None:
    """A real gateway is configured, so the simulator is behind the login too; its chat is steered from the panel."""
    e2e: Harness = console.harness
    console.start(**PANEL)
    console.open("/simulator")
    console.wait_for("#token")  # the simulator can spend the owner's tokens now
    log_in(console, here=True)
    add_customer(console, "Paula", NUMBER)
    type_message(console, "Oi, vocês entregam no centro?")
    console.wait_for_text("#bubbles .bubble.bot", "Resposta:", timeout=10)

    console.open("/admin/")
    row = console.wait_for(f'tr.chat-row[data-chat="simulator:console:{NUMBER}@sim"]')
    assert NUMBER in row.text and "Paula" in row.text and "aberta" in row.text
    console.screenshot("admin-chats")
    row.find_element(By.TAG_NAME, "a").click()
    console.wait_for_text("#chat-body", "Oi, vocês entregam no centro?")
    console.wait_for("#reply-text").send_keys("Oi! Aqui é a Carla, entregamos sim.")
    console.driver.find_element(By.ID, "send-reply").click()
    console.wait_for_text(".flash", "Mensagem enviada")
    console.wait_for_text("#chat-body .state", "bot pausado")
    console.screenshot("admin-chat")
    chat_page = console.driver.current_url

    console.open("/simulator")  # the customer is remembered by the page
    console.wait_for_text("#bubbles .bubble.person", "Aqui é a Carla")
    console.wait_for_text("#chat-state", "bot pausado")
    type_message(console, "Que horas chega?")  # a person is on it: the bot stays quiet
    assert_stays(lambda: len(e2e.prompts()), 1, seconds=3, what="Gemini calls")
    assert len(bot_bubbles(console)) == 1

    console.driver.get(chat_page)
    console.wait_for("#resume").click()
    console.wait_for_text(".flash", "Bot retomado")
    console.wait_for_text("#chat-body .state", "aberta")
    console.open("/simulator")
    type_message(console, "E o frete?")
    console.wait_for_text("#bubbles .bubble.bot:last-of-type", "E o frete?", timeout=10)
    assert len(e2e.prompts()) == 2


def test_a_failed_delivery_is_retried_from_the_panel(console: Console) -> None:
    e2e: Harness = console.harness
    e2e.evolution.queue(Canned(400, {"status": 400, "error": "Bad Request", "response": {"message": ["exists"]}}))
    server = console.start(**PANEL)
    server.burst(["Quero encomendar um bolo"])
    wait_until(lambda: e2e.redis_keys() and dead_letters(server), timeout=10, what="a dead letter")

    log_in(console)
    console.open("/admin/deliveries")
    letter = console.wait_for("tr.letter")
    assert "Resposta: Quero encomendar um bolo" in letter.text and "400" in letter.text
    console.screenshot("admin-deliveries")
    letter.find_element(By.CSS_SELECTOR, "button.retry").click()
    console.wait_for_text(".flash", "Resposta entregue")
    assert not console.driver.find_elements(By.CSS_SELECTOR, "tr.letter")
    sends = e2e.wait_sends(2)
    assert sends[-1].json["text"] == "Resposta: Quero encomendar um bolo"
    assert dead_letters(server) == []


def dead_letters(server: Any) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    return requests.get(server.url + "/admin/api/dead-letters", headers=headers, timeout=5).json()


def test_a_post_without_its_csrf_token_is_refused(console: Console) -> None:
    e2e: Harness = console.harness
    server = console.start(**PANEL)
    server.burst(["Oi"])
    e2e.wait_sends(1)
    log_in(console)
    console.wait_for("table.chats")

    chat = f"evolution:loja-e2e:{CUSTOMER_JID}"
    status = console.driver.execute_async_script(
        """const done = arguments[arguments.length - 1];
        fetch(arguments[0], {method: "POST", body: new URLSearchParams({action: "pause"}), credentials: "same-origin"})
          .then((r) => done(r.status), () => done(-1));""",
        f"/admin/chats/{chat}/action",
    )
    assert status == 400
    state = requests.get(
        server.url + f"/admin/api/chats/{chat}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=5
    ).json()["state"]
    assert state == "open"  # the forged pause did not happen


@pytest.mark.parametrize(
    "path", ["/admin/", "/admin/search?q=entrega", "/admin/deliveries", "/admin/knowledge", "/admin/status"]
)
def test_panel_pages_render_for_the_owner(console: Console, path: str) -> None:
    console.start(**PANEL)
    log_in(console)
    console.wait_for("table.chats")
    console.open(path)
    console.wait_for("main .card")
    assert not [e for e in console.browser_log() if e["level"] == "SEVERE"], console.browser_log()
    if path == "/admin/status":
        console.screenshot("admin-status")


def test_a_tenants_session_sees_its_knowledge_and_a_page_that_explains_the_status_refusal(console: Console) -> None:
    folder = console.harness.tmp_path / "tenants"
    (folder / "padaria-kb").mkdir(parents=True)
    (folder / "padaria-kb" / "precos.md").write_text("# Preços\n\nPão francês custa R$ 0,90.\n", encoding="utf-8")
    (folder / "tenants.toml").write_text(
        '[tenants.padaria]\nname = "Padaria Pão Quente"\nevolution_instances = ["padaria"]\n'
        'KNOWLEDGE_DIR = "padaria-kb"\nADMIN_TOKEN = "browser-token-da-padaria"\n',
        encoding="utf-8",
    )
    console.start(**PANEL, TENANTS_FILE=str(folder / "tenants.toml"))
    log_in(console, "browser-token-da-padaria")
    console.wait_for("#nav-knowledge").click()
    console.wait_for_text("main h1", "Padaria Pão Quente")
    assert "precos.md" in console.driver.find_element(By.CSS_SELECTOR, "main table").text
    console.driver.find_element(By.CSS_SELECTOR, "input[name=q]").send_keys("quanto custa o pao", Keys.ENTER)
    assert "R$ 0,90" in console.wait_for("article.hit").text

    console.open("/admin/status")
    assert "Esta página é da implantação inteira" in console.wait_for("main .card").text
    assert console.driver.find_elements(By.ID, "nav-knowledge")  # the tenant's own links stay
    assert not [e for e in console.browser_log() if e["level"] == "SEVERE" and "403" not in e["message"]]
