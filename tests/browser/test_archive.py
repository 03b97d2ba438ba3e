"""The archive in the owner's panel, in a real browser, with the server on a PostgreSQL of its own (DATABASE_URL):
customers' messages are answered and archived, found by a Portuguese search, read in the chat's whole history,
exported as a JSON download, and erased (after a confirmation step) so that nothing of the contact is left.

The screenshots docs/screenshots/admin-search.png and admin-chat-archive.png are taken here.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import requests
from selenium.webdriver.common.by import By

from tests.browser.conftest import Console
from tests.browser.test_console import ADMIN_TOKEN, PANEL, log_in
from tests.e2e.conftest import CUSTOMER_JID, INSTANCE, ServerProcess, wait_until

CHAT = f"evolution:{INSTANCE}:{CUSTOMER_JID}"
NUMBER = CUSTOMER_JID.split("@")[0]
QUESTION = "Vocês entregam no domingo?"
ARCHIVE_TIMEOUT_SECONDS = 15.0  # reply (debounce 1 s) + the writer's next batch, with room for a loaded machine


def archived(server: ServerProcess) -> list[dict[str, Any]]:
    """The chat's archived events (newest first), through the bearer API."""
    response = requests.get(
        f"{server.url}/admin/api/chats/{CHAT}/archive", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=5
    )
    assert response.status_code == 200, response.text
    return response.json()["events"]


def replied_and_archived(server: ServerProcess) -> bool:
    authors = [event["author"] for event in archived(server)]
    return authors.count("customer") == 2 and "bot" in authors and server.health()["archive"]["backlog"] == 0


def downloaded(folder: Path) -> Path | None:
    return next(folder.glob("contato-*.json"), None)  # Chromium writes a .crdownload until the file is complete


def test_the_archive_is_searched_read_exported_and_erased(console: Console, postgres_url: str, tmp_path: Path) -> None:
    started = time.monotonic()
    server = console.start(**PANEL, DATABASE_URL=postgres_url)
    assert server.health()["archive"]["state"] == "up"
    server.burst(["Oi, boa tarde", QUESTION])
    console.harness.wait_sends(1)
    wait_until(lambda: replied_and_archived(server), timeout=ARCHIVE_TIMEOUT_SECONDS, what="the chat archived")

    # Search: "entrega" finds "entregam" (Portuguese stemming), each result linking to its chat.
    log_in(console)
    console.wait_for("table.chats")
    console.driver.find_element(By.ID, "nav-archive").click()
    console.wait_for("#archive-q").send_keys("entrega")
    console.driver.find_element(By.ID, "archive-search").click()
    row = console.wait_for(f'tr.result[data-chat="{CHAT}"]')
    results = console.driver.find_elements(By.CSS_SELECTOR, "tr.result")
    texts = [result.text for result in results]
    assert any(f"Cliente: {QUESTION}" in text for text in texts), texts
    assert all(NUMBER in text for text in texts) and "Cliente E2E" in row.text  # the number, and the profile name
    assert "resultado" in console.wait_for("#result-count").text
    console.screenshot("admin-search")

    # The chat's whole archived history, oldest first, with who wrote each message.
    row.find_element(By.TAG_NAME, "a").click()
    section = console.wait_for_text("#arquivo", QUESTION)
    bubbles = section.find_elements(By.CSS_SELECTOR, ".archive-events .bubble")
    assert [b.find_element(By.CSS_SELECTOR, ".who").text for b in bubbles] == ["Cliente", "Cliente", "Assistente"]
    assert "Oi, boa tarde" in bubbles[0].text and QUESTION in bubbles[1].text
    assert bubbles[2].find_element(By.CSS_SELECTOR, ".text").text.startswith("Resposta:")
    console.driver.execute_script("arguments[0].scrollIntoView()", section)
    console.screenshot("admin-chat-archive")

    # Export: a JSON file downloaded by the browser, with the archive in it.
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    console.driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    console.driver.find_element(By.ID, "export").click()
    exported = json.loads(wait_until(lambda: downloaded(downloads), timeout=10, what="the export").read_text())
    assert exported["chat"] == CHAT
    assert [e["text"] for e in exported["archive"] if e["author"] == "customer"] == ["Oi, boa tarde", QUESTION]

    # Erase: a confirmation page first, then everything of the contact is gone, the archive included.
    console.driver.find_element(By.ID, "erase").click()
    console.wait_for_text("main h1", "Apagar os dados de")
    assert archived(server)  # asking is not erasing
    console.driver.find_element(By.ID, "confirm-erase").click()
    flash = console.wait_for_text(".flash", "Dados do contato apagados").text
    assert "eventos do arquivo" in flash, flash
    assert console.driver.current_url.endswith("/admin/")
    assert archived(server) == []
    assert not console.driver.find_elements(By.CSS_SELECTOR, f'tr.chat-row[data-chat="{CHAT}"]')
    console.open("/admin/search?q=entrega")
    console.wait_for_text("#result-count", "Nada encontrado")
    console.open(f"/admin/chats/{CHAT}")
    console.wait_for_text("#archive-empty", "Nada no arquivo")

    assert not [e for e in console.browser_log() if e["level"] == "SEVERE"], console.browser_log()
    server.assert_logs_private(QUESTION, "Oi, boa tarde", NUMBER)
    print(f"archive scenario took {time.monotonic() - started:.1f}s")
