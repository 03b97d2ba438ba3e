"""End-to-end: three businesses on two gateways (Evolution and Meta) in one `gunicorn -w 4` deployment with a
TENANTS_FILE. Each customer gets its tenant's persona and knowledge (in the prompt the fake Gemini receives) and the
tenant's gateway credentials on the send; one customer writing to two businesses is two chats; one tenant outside
its hours while the others are open; a tenant's admin token sees its chat and gets 404 on another's; an unclaimed
instance is ignored; editing the file adds a tenant without a restart, and a broken edit keeps the old tenants."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import requests

from tests.e2e.conftest import Harness, upsert, wait_count, wait_until
from tests.e2e.fakes_e2e_gateways import (
    CUSTOMER_NUMBER,
    META_PHONE_NUMBER_ID,
    FakeGraph,
    gateway_env,
    meta_text,
    post_meta,
)

CUSTOMER = f"{CUSTOMER_NUMBER}@s.whatsapp.net"  # the same person on every business

TENANTS = """
[tenants.padaria]
name = "Padaria Pão Quente"
evolution_instances = ["padaria"]
SYSTEM_PROMPT = "Você é a Ana, atendente da Padaria Pão Quente."
KNOWLEDGE_DIR = "padaria-kb"
RAG_WHOLE_MAX_CHARS = 100000
AUTHENTICATION_API_KEY = "apikey-da-padaria"
ADMIN_TOKEN = "admin-da-padaria"

[tenants.petshop]
name = "Pet Shop Amigo Fiel"
evolution_instances = ["petshop"]
SYSTEM_PROMPT = "Você é a Mel, atendente do Pet Shop Amigo Fiel."
KNOWLEDGE_DIR = "petshop-kb"
RAG_WHOLE_MAX_CHARS = 100000
BUSINESS_HOURS = "mon-sun 00:00-00:01"
BOT_HOURS = "business"
OUT_OF_HOURS_REPLY = "O Pet Shop está fechado agora."
ADMIN_TOKEN = "admin-do-petshop"

[tenants.clinica]
name = "Clínica Sorriso"
meta_phone_number_ids = ["{meta}"]
SYSTEM_PROMPT = "Você é a Bia, recepcionista da Clínica Sorriso."
KNOWLEDGE_DIR = "clinica-kb"
RAG_WHOLE_MAX_CHARS = 100000
META_ACCESS_TOKEN = "token-meta-da-clinica"
"""

SORVETERIA = """
[tenants.sorveteria]
name = "Sorveteria Gelato"
evolution_instances = ["sorveteria"]
SYSTEM_PROMPT = "Você é o Leo, da Sorveteria Gelato."
"""

FACTS = {
    "padaria-kb": "O pão francês custa R$ 0,90.",
    "petshop-kb": "O banho de cão pequeno custa R$ 55.",
    "clinica-kb": "A limpeza dental custa R$ 180.",
}


def write_tenants(folder: Path) -> Path:
    for name, fact in FACTS.items():
        (folder / name).mkdir(exist_ok=True)
        (folder / name / "precos.md").write_text(f"# Preços\n\n{fact}\n", encoding="utf-8")
    path = folder / "tenants.toml"
    path.write_text(TENANTS.replace("{meta}", META_PHONE_NUMBER_ID), encoding="utf-8")
    return path


def system_text(prompt: dict[str, Any]) -> str:
    return "\n".join(part.get("text", "") for part in prompt["systemInstruction"]["parts"])


def prompt_with(e2e: Harness, needle: str) -> dict[str, Any]:
    (found,) = [prompt for prompt in e2e.prompts() if needle in system_text(prompt)]
    return found


def test_three_businesses_on_two_gateways_in_one_deployment(e2e: Harness, tmp_path: Path, postgres_url: str) -> None:
    graph = FakeGraph()
    try:
        run_three_businesses(e2e, graph, write_tenants(tmp_path), postgres_url)
    finally:
        graph.close()


def run_three_businesses(e2e: Harness, graph: FakeGraph, path: Path, postgres_url: str) -> None:
    server = e2e.gunicorn_server(
        workers=4,
        DATABASE_URL=postgres_url,
        TENANTS_FILE=str(path),
        TENANTS_RELOAD_SECONDS="0.5",
        ADMIN_TOKEN="admin-da-agencia",
        LOG_FORMAT="json",
        **gateway_env(graph),
    )
    assert server.post(upsert("Quanto custa o pão?", jid=CUSTOMER, instance="padaria")).json()["buffered"] == 1
    assert server.post(upsert("Quanto custa o banho?", jid=CUSTOMER, instance="petshop")).json()["buffered"] == 1
    assert post_meta(server.url, meta_text("Quanto custa a limpeza?")).json()["buffered"] == 1
    unclaimed = server.post(upsert("Oi", jid=CUSTOMER, instance="desconhecida"))
    assert unclaimed.json() == {"status": "ignored", "reason": "no_tenant"}

    sends = e2e.wait_sends(2)
    wait_count(lambda: len(graph.received()), 1, timeout=20, what="the clinic's Graph send")
    by_instance = {send.path.rsplit("/", 1)[-1]: send for send in sends}
    assert set(by_instance) == {"padaria", "petshop"}  # nothing for the unclaimed instance
    assert by_instance["padaria"].headers["apikey"] == "apikey-da-padaria"
    assert by_instance["petshop"].headers["apikey"] != "apikey-da-padaria"  # the environment's key
    assert by_instance["petshop"].json["text"] == "O Pet Shop está fechado agora."  # closed: no model asked
    (meta_send,) = graph.received()
    assert meta_send.headers["authorization"] == "Bearer token-meta-da-clinica"

    assert len(e2e.prompts()) == 2
    padaria = system_text(prompt_with(e2e, "Ana, atendente da Padaria"))
    clinica = system_text(prompt_with(e2e, "Bia, recepcionista"))
    assert FACTS["padaria-kb"] in padaria and FACTS["clinica-kb"] not in padaria
    assert FACTS["clinica-kb"] in clinica and FACTS["padaria-kb"] not in clinica
    assert "Pet Shop" not in padaria + clinica

    # Every log line about a burst names its business.
    def tenants_of_sent_replies() -> set[str]:
        lines = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
        return {line["tenant"] for line in lines if line["message"].startswith("reply sent ")}

    wait_until(lambda: {"padaria", "petshop", "clinica"} <= tenants_of_sent_replies(), timeout=10, what="log lines")
    # ... and so do the metrics of each business's messages and replies.
    metrics = requests.get(f"{server.url}/metrics", timeout=5).text
    assert 'wa_webhooks_total{gateway="evolution",outcome="buffered",reason="",tenant="padaria"} 1.0' in metrics
    assert 'wa_webhooks_total{gateway="evolution",outcome="ignored",reason="no_tenant",tenant=""} 1.0' in metrics
    assert 'wa_sends_total{gateway="meta",result="sent",tenant="clinica"} 1.0' in metrics

    # Every key of a business's chat carries the business: its history, conversation... (the clinic's is on Meta).
    histories = [key.split(":history:", 1)[1] for key in e2e.redis_keys() if ":history:" in key]
    assert sorted(chat.split("/", 1)[0] for chat in histories) == ["clinica", "padaria", "petshop"], histories
    of_chats = [key for key in e2e.redis_keys() if ":chat:" in key or ":history:" in key]
    assert of_chats and all(any(f"{t}/" in key for t in ("clinica", "padaria", "petshop")) for key in of_chats)

    # The same customer on two businesses: two chats, each with its own history.
    padaria_chat, petshop_chat = f"evolution:padaria:{CUSTOMER}", f"evolution:petshop:{CUSTOMER}"
    mine = {"Authorization": "Bearer admin-da-padaria"}
    own = requests.get(f"{server.url}/admin/api/chats/{padaria_chat}", headers=mine, timeout=5)
    assert own.status_code == 200
    assert [m["text"] for m in own.json()["last_messages"]][0] == "Quanto custa o pão?"
    for url in (f"/admin/api/chats/{petshop_chat}", f"/admin/api/contacts/{petshop_chat}/export"):
        assert requests.get(server.url + url, headers=mine, timeout=5).status_code == 404
    agency = {"Authorization": "Bearer admin-da-agencia"}
    theirs = requests.get(f"{server.url}/admin/api/chats/{petshop_chat}", headers=agency, timeout=5).json()
    assert [m["text"] for m in theirs["last_messages"]][0] == "Quanto custa o banho?"

    # The archive's search: the agency finds every business's customer, a business only its own.
    def found(headers: dict[str, str]) -> set[tuple[str, str]]:
        answer = requests.get(f"{server.url}/admin/api/search?q=quanto custa", headers=headers, timeout=5)
        assert answer.status_code == 200, answer.text
        return {(row["tenant"], row["chat"]) for row in answer.json()["results"] if row["author"] == "customer"}

    wait_until(lambda: len(found(agency)) == 3, timeout=20, what="the three customers' messages archived")
    assert {tenant for tenant, _ in found(agency)} == {"padaria", "petshop", "clinica"}
    assert found(mine) == {("padaria", padaria_chat)}

    # A tenant added to the file answers without a restart, in every process.
    path.write_text(path.read_text(encoding="utf-8") + SORVETERIA, encoding="utf-8")
    wait_until(lambda: server.health()["tenants"]["count"] == 4, timeout=10, what="the new tenant")
    time.sleep(1.0)  # every gunicorn worker has looked at the file again (TENANTS_RELOAD_SECONDS=0.5)
    assert server.post(upsert("Tem sorvete de açaí?", jid=CUSTOMER, instance="sorveteria")).json()["buffered"] == 1
    e2e.wait_sends(3)
    assert "Leo, da Sorveteria" in system_text(e2e.prompts()[-1])

    # An edit that does not parse keeps the four tenants, and says why.
    path.write_text("[tenants.padaria\nevolution_instances = ['padaria']\n", encoding="utf-8")
    time.sleep(1.5)  # every process has looked at the file since (each looks every 0.5 s)
    for _ in range(8):  # whichever gunicorn worker answers
        tenants = server.health()["tenants"]
        assert tenants["count"] == 4 and "TOML" in tenants["error"], tenants
    assert server.post(upsert("Tem pão de queijo?", jid=CUSTOMER, instance="padaria")).json()["buffered"] == 1
    e2e.wait_sends(4)
    assert "Ana, atendente da Padaria" in system_text(e2e.prompts()[-1])
