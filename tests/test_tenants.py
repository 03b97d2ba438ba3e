"""Several businesses in one deployment (tenants.py): the TENANTS_FILE's rules, its reload, and the whole path on a
real Redis with the fakes: each tenant's persona, knowledge, model, key, hours and gateway credentials; an unclaimed
identity ignored; one customer writing to two businesses as two chats."""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, quote

import pytest
from flask import Flask

from config import Settings, load_settings
from errors import ConfigError
from models import ChatRef
from tenants import TenantDirectory, TenantsError, parse_tenants
from tests.conftest import make_settings
from tests.fakes import Canned, FakeEvolution, FakeGemini
from tests.test_gateways import FakeGraph, FakeTwilio, sign_meta, twilio_form, twilio_signature
from webhook import Components

CUSTOMER = "5511987654321@s.whatsapp.net"

TWO_TENANTS = """
[tenants.padaria]
name = "Padaria Pão Quente"
evolution_instances = ["padaria"]
SYSTEM_PROMPT_FILE = "padaria.txt"
KNOWLEDGE_DIR = "padaria-kb"
RAG_WHOLE_MAX_CHARS = 100000
AUTHENTICATION_API_KEY = "key-of-the-padaria"
GEMINI_MODEL = "gemini-padaria"
DEBOUNCE_SECONDS = 0

[tenants.petshop]
name = "Pet Shop Amigo Fiel"
evolution_instances = ["petshop", "petshop-sul"]
twilio_numbers = ["+14155238886"]
SYSTEM_PROMPT = "Você é a Mel, do Pet Shop Amigo Fiel."
KNOWLEDGE_DIR = "petshop-kb"
RAG_WHOLE_MAX_CHARS = 100000
GEMINI_API_KEY = "gemini-key-of-the-petshop"
DEBOUNCE_SECONDS = 0
"""


@pytest.fixture
def tenants_dir(tmp_path: Path) -> Path:
    (tmp_path / "padaria.txt").write_text("Você é a Ana, da Padaria Pão Quente.", encoding="utf-8")
    for folder, fact in (("padaria-kb", "Pão francês custa R$ 0,90."), ("petshop-kb", "Banho de cão pequeno: R$ 55.")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "precos.md").write_text(f"# Preços\n\n{fact}\n", encoding="utf-8")
    (tmp_path / "tenants.toml").write_text(TWO_TENANTS, encoding="utf-8")
    return tmp_path


TENANT_OF = {"padaria": "padaria", "petshop": "petshop", "petshop-sul": "petshop"}  # TWO_TENANTS' instances


def chat(instance: str, customer: str = CUSTOMER) -> ChatRef:
    """The chat of `customer` on an Evolution instance of TWO_TENANTS, with the tenant that claims it."""
    return ChatRef(gateway="evolution", instance=instance, chat_id=customer, tenant=TENANT_OF.get(instance, "default"))


# ----- the file ---------------------------------------------------------------------------------------------


def test_a_file_gives_each_tenant_its_identities_and_settings(tenants_dir: Path) -> None:
    base = make_settings(business_name="Ambiente", gemini_model="gemini-base")
    tenants = parse_tenants((tenants_dir / "tenants.toml").read_text(), base, folder=tenants_dir)
    padaria, petshop = tenants["padaria"], tenants["petshop"]
    assert padaria.identities == {("evolution", "padaria")}
    assert petshop.identities == {
        ("evolution", "petshop"),
        ("evolution", "petshop-sul"),
        ("twilio", "whatsapp:+14155238886"),
    }
    assert padaria.settings.system_prompt == "Você é a Ana, da Padaria Pão Quente."
    assert padaria.settings.knowledge_dir == str(tenants_dir / "padaria-kb")
    assert (padaria.settings.gemini_model, petshop.settings.gemini_model) == ("gemini-padaria", "gemini-base")
    assert (padaria.settings.authentication_api_key, petshop.settings.gemini_api_key) == (
        "key-of-the-padaria",
        "gemini-key-of-the-petshop",
    )
    assert petshop.settings.business_name == "Ambiente"  # not set: the environment's


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (
            "[tenants.a]\nevolution_instances = ['x']\n[tenants.b]\nevolution_instances = ['x']",
            "claimed by tenants a and b",
        ),
        (
            "[tenants.a]\nevolution_instances = ['x']\nCACHE_REDIS_URI = 'redis://x'",
            "CACHE_REDIS_URI: not set per tenant",
        ),
        ("[tenants.a]\nevolution_instances = ['x']\nBUSINES_NAME = 'Loja'", "BUSINES_NAME: not a setting"),
        ("[tenants.a]\nevolution_instances = ['x']\nBUSINESS_HOURS = 'seg 08:00-18:00'", "BUSINESS_HOURS: unknown day"),
        ("[tenants.a]\nname = 'Loja'", "claims no identity"),
        ("[tenants.a]\nevolution_instances = 'x'", "evolution_instances: expected a list"),
        ("[tenants.A]\nevolution_instances = ['x']", "an id is 1-40 lowercase"),
        ("[tenants.a\nevolution_instances = ['x']", "not valid TOML"),
        ("name = 'x'", "no [tenants.<id>] table"),
    ],
)
def test_a_file_that_cannot_be_used_says_why(text: str, reason: str, tmp_path: Path) -> None:
    with pytest.raises(TenantsError, match=reason.replace("[", r"\[").replace(".", r"\.").replace("<", "<")):
        parse_tenants(text, make_settings(), folder=tmp_path)


def test_a_broken_file_stops_the_start(tmp_path: Path) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text("[tenants.a]\nevolution_instances = ['x']\nDEBOUNCE_SECONDS = 'soon'\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="DEBOUNCE_SECONDS"):
        load_settings({"TENANTS_FILE": str(path)})
    with pytest.raises(ConfigError, match="cannot read it"):
        load_settings({"TENANTS_FILE": str(tmp_path / "missing.toml")})


def test_an_edit_is_read_without_a_restart_and_a_broken_one_keeps_the_last_good(tenants_dir: Path) -> None:
    now = [0.0]
    path = tenants_dir / "tenants.toml"
    directory = TenantDirectory(make_settings(), path=str(path), reload_seconds=5, clock=lambda: now[0])
    assert directory.health() == {"count": 2, "error": None}
    assert directory.claimant(chat("padoca")) is None

    path.write_text(TWO_TENANTS + "\n[tenants.padoca]\nevolution_instances = ['padoca']\n", encoding="utf-8")
    assert directory.claimant(chat("padoca")) is None  # looked at every 5 s
    now[0] += 5
    added = directory.claimant(chat("padoca"))
    assert added is not None and added.id == "padoca"
    assert directory.health() == {"count": 3, "error": None}

    path.write_text(TWO_TENANTS + "\n[tenants.padoca]\nevolution_instances = ['padaria']\n", encoding="utf-8")
    now[0] += 5
    kept = directory.claimant(chat("padoca"))
    assert kept is not None and kept.id == "padoca"  # the last good file still answers
    health = directory.health()
    assert health["count"] == 3 and "claimed by tenants padaria and padoca" in health["error"]

    path.write_text(TWO_TENANTS, encoding="utf-8")
    now[0] += 5
    assert directory.claimant(chat("padoca")) is None
    assert directory.health() == {"count": 2, "error": None}


def test_without_a_file_one_tenant_claims_every_identity() -> None:
    directory = TenantDirectory(make_settings(business_name="Loja"))
    tenant = directory.claimant(chat("qualquer"))
    assert tenant is not None and (tenant.id, tenant.name) == ("default", "Loja")
    assert directory.health() == {"count": 1, "error": None}


# ----- the whole path ---------------------------------------------------------------------------------------


@pytest.fixture
def tenant_app(make_app: Callable[..., Flask], tenants_dir: Path) -> Iterator[Flask]:
    yield make_app(tenants_file=str(tenants_dir / "tenants.toml"), tenants_reload_seconds=0.05)


def app_with_tenants(make_app: Callable[..., Flask], folder: Path, text: str, **settings: object) -> Flask:
    """The app with `text` as its TENANTS_FILE, in `folder` (where the file's relative paths start)."""
    path = folder / "tenants.toml"
    path.write_text(text, encoding="utf-8")
    return make_app(tenants_file=str(path), **settings)


def post(app: Flask, instance: str, text: str, message_id: str, customer: str = CUSTOMER) -> dict[str, object]:
    key = {"remoteJid": customer, "fromMe": False, "id": message_id}
    body = {"event": "messages.upsert", "instance": instance, "data": {"key": key, "message": {"conversation": text}}}
    response = app.test_client().post("/webhook", json=body)
    assert response.status_code == 200, response.text
    return response.json


def answer_all(parts: Components) -> int:
    time.sleep(0.05)
    return parts.worker.run_once(wait=True)


def system_text(prompt: dict[str, object]) -> str:
    return "\n".join(part["text"] for part in prompt["systemInstruction"]["parts"])  # type: ignore[index]


def test_each_tenant_answers_with_its_persona_knowledge_model_and_credentials(
    tenant_app: Flask, fake_gemini: FakeGemini, fake_evolution: FakeEvolution
) -> None:
    parts: Components = tenant_app.extensions["assistant"]
    assert post(tenant_app, "padaria", "Quanto custa o pão?", "P1")["buffered"] == 1
    assert post(tenant_app, "petshop", "Quanto custa o banho?", "P2")["buffered"] == 1  # the same customer
    assert answer_all(parts) == 2

    by_model = {recorded.path.split("/")[-1].split(":")[0]: recorded for recorded in fake_gemini.received()}
    padaria, petshop = by_model["gemini-padaria"], by_model[parts.settings.gemini_model]
    assert "Ana, da Padaria" in system_text(padaria.json) and "Pão francês" in system_text(padaria.json)
    assert "Mel, do Pet Shop" in system_text(petshop.json) and "Banho de cão" in system_text(petshop.json)
    assert "Banho" not in system_text(padaria.json) and "Pão francês" not in system_text(petshop.json)
    assert padaria.headers["x-goog-api-key"] == parts.settings.gemini_api_key
    assert petshop.headers["x-goog-api-key"] == "gemini-key-of-the-petshop"

    sends = {send.path.rsplit("/", 1)[-1]: send for send in fake_evolution.sends()}
    assert sends["padaria"].headers["apikey"] == "key-of-the-padaria"
    assert sends["petshop"].headers["apikey"] == parts.settings.authentication_api_key
    # One customer, two businesses: two chats with their own histories.
    assert [t.text for t in parts.history.recent(chat("padaria"))][0] == "Quanto custa o pão?"
    assert [t.text for t in parts.history.recent(chat("petshop"))][0] == "Quanto custa o banho?"


def test_an_identity_no_tenant_claims_is_ignored_and_counted(
    tenant_app: Flask, fake_gemini: FakeGemini, fake_evolution: FakeEvolution
) -> None:
    parts: Components = tenant_app.extensions["assistant"]
    assert post(tenant_app, "desconhecida", "Oi", "U1") == {"status": "ignored", "reason": "no_tenant"}
    assert answer_all(parts) == 0
    assert fake_gemini.received() == [] and fake_evolution.sends() == []
    health = tenant_app.test_client().get("/health").json
    assert (health["tenants"]["count"], health["tenants"]["error"]) == (2, None)
    assert health["counters"]["ignored"] == 1


def test_one_tenant_closed_while_another_is_open(
    make_app: Callable[..., Flask], tenants_dir: Path, fake_evolution: FakeEvolution
) -> None:
    closed_always = 'BUSINESS_HOURS = "mon-sun 00:00-00:01"\nBOT_HOURS = "business"\nOUT_OF_HOURS_REPLY = "Fechados."\n'
    text = TWO_TENANTS.replace("[tenants.petshop]", closed_always + "\n[tenants.petshop]")
    app = app_with_tenants(make_app, tenants_dir, text)
    parts: Components = app.extensions["assistant"]
    post(app, "padaria", "Vocês estão abertos?", "H1")
    post(app, "petshop", "Vocês estão abertos?", "H2")
    assert answer_all(parts) == 2
    texts = {send.path.rsplit("/", 1)[-1]: send.json["text"] for send in fake_evolution.sends()}
    assert texts["padaria"] == "Fechados." or texts["padaria"].startswith("Fechados")
    assert texts["petshop"].startswith("Resposta:")


def test_a_chat_whose_tenant_left_the_file_becomes_a_dead_letter(
    tenant_app: Flask, tenants_dir: Path, fake_gemini: FakeGemini
) -> None:
    parts: Components = tenant_app.extensions["assistant"]
    post(tenant_app, "petshop-sul", "Oi", "D1")
    (tenants_dir / "tenants.toml").write_text(TWO_TENANTS.replace(', "petshop-sul"', ""), encoding="utf-8")
    time.sleep(0.1)  # past TENANTS_RELOAD_SECONDS (0.05)
    answer_all(parts)
    assert fake_gemini.received() == []
    (letter,) = parts.buffer.dead_letters()
    assert (letter["chat"], letter["error"]) == (chat("petshop-sul").key, "its tenant no longer claims this identity")


def test_every_key_of_a_tenants_chat_carries_the_tenant(
    tenant_app: Flask, fake_gemini: FakeGemini, fake_evolution: FakeEvolution
) -> None:
    parts: Components = tenant_app.extensions["assistant"]
    post(tenant_app, "padaria", "Oi", "K1")
    client, prefix = parts.link.client, parts.keys.prefix
    assert client is not None
    waiting = {key for key in client.scan_iter(f"{prefix}:*") if "5511987654321" in key}
    assert waiting and all(f"padaria/evolution:padaria:{CUSTOMER}" in key for key in waiting), waiting
    assert client.zrange(parts.keys.due(), 0, -1) == [f"padaria/evolution:padaria:{CUSTOMER}"]
    answer_all(parts)
    kept = {key for key in client.scan_iter(f"{prefix}:*") if "5511987654321" in key}
    assert parts.keys.history(chat("padaria").key) in kept
    assert all("padaria/" in key for key in kept), kept


def test_a_number_given_to_another_tenant_starts_over_there(
    tenant_app: Flask, tenants_dir: Path, fake_gemini: FakeGemini, fake_evolution: FakeEvolution
) -> None:
    """The pet shop's history stays the pet shop's: the padaria, now answering on that instance, does not see it,
    and what the pet shop's customer wrote before the move is not answered with the padaria's settings."""
    parts: Components = tenant_app.extensions["assistant"]
    post(tenant_app, "petshop-sul", "Meu cachorro se chama Rex", "M1")
    answer_all(parts)
    post(tenant_app, "petshop-sul", "Ainda está aí?", "M2")  # buffered for the pet shop, then the number moves
    moved = TWO_TENANTS.replace(', "petshop-sul"', "").replace(
        'evolution_instances = ["padaria"]', 'evolution_instances = ["padaria", "petshop-sul"]'
    )
    assert moved != TWO_TENANTS
    (tenants_dir / "tenants.toml").write_text(moved, encoding="utf-8")
    time.sleep(0.1)  # past TENANTS_RELOAD_SECONDS (0.05)
    answer_all(parts)
    (letter,) = parts.buffer.dead_letters()
    assert letter["chat"] == f"petshop/evolution:petshop-sul:{CUSTOMER}"

    post(tenant_app, "petshop-sul", "Bom dia", "M3")
    answer_all(parts)
    prompt = fake_gemini.prompts()[-1]
    assert "Ana, da Padaria" in system_text(prompt) and "Rex" not in str(prompt["contents"])
    padaria_chat = dataclasses.replace(chat("petshop-sul"), tenant="padaria")
    assert [turn.text for turn in parts.history.recent(padaria_chat)][0] == "Bom dia"
    assert "Rex" in parts.history.recent(chat("petshop-sul"))[0].text  # the pet shop's, until its TTL


def test_settings_fields_a_tenant_sets_exist() -> None:
    """Every name a tenant may set is a setting this service reads (a renamed variable would break tenant files)."""
    from config import ENV_VARIABLES, SYSTEM_PROMPT_FILE
    from tenants import TENANT_SETTINGS

    assert TENANT_SETTINGS <= {*ENV_VARIABLES, SYSTEM_PROMPT_FILE}
    assert {f.name for f in dataclasses.fields(Settings)} >= {
        ENV_VARIABLES[name][0] for name in TENANT_SETTINGS - {SYSTEM_PROMPT_FILE}
    }


# ----- admin access -----------------------------------------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_tenants_admin_token_sees_only_its_own_chats(
    make_app: Callable[..., Flask], tenants_dir: Path, postgres_url: str, fake_evolution: FakeEvolution
) -> None:
    path = tenants_dir / "tenants.toml"
    path.write_text(
        TWO_TENANTS.replace("[tenants.petshop]", 'ADMIN_TOKEN = "token-da-padaria"\n\n[tenants.petshop]')
        + 'ADMIN_TOKEN = "token-do-petshop"\n',
        encoding="utf-8",
    )
    app = make_app(tenants_file=str(path), admin_token="token-da-agencia", database_url=postgres_url)
    parts: Components = app.extensions["assistant"]
    post(app, "padaria", "Quero pão de queijo", "A1")
    post(app, "petshop", "Quero banho e tosa", "A2")
    fake_evolution.queue(Canned(400, {"error": "number not on WhatsApp"}))  # the first reply becomes a dead letter
    answer_all(parts)
    writer = parts.archive.writer
    assert writer is not None
    writer.block_ms = 10
    for _ in range(20):
        writer.step()
        if writer.backlog() == 0:
            break
    client = app.test_client()
    padaria, petshop = chat("padaria").address, chat("petshop").address  # `<chat>` in URLs: no tenant in it
    mine, agency = bearer("token-da-padaria"), bearer("token-da-agencia")

    assert client.get(f"/admin/api/chats/{padaria}", headers=mine).status_code == 200
    refused = client.get(f"/admin/api/chats/{petshop}", headers=mine)
    assert (refused.status_code, refused.json["error"]) == (404, "unknown chat")  # as if it did not exist
    assert client.post(f"/admin/api/chats/{petshop}/pause", headers=mine).status_code == 404
    assert client.get(f"/admin/api/contacts/{petshop}/export", headers=mine).status_code == 404
    assert client.get(f"/admin/api/chats/{petshop}/archive", headers=mine).status_code == 404
    assert client.delete(f"/admin/api/contacts/{petshop}", headers=mine).status_code == 404
    assert client.get(f"/admin/api/contacts/{padaria}/export", headers=mine).json["chat"] == padaria
    assert client.get(f"/admin/api/chats/{petshop}", headers=agency).status_code == 200  # the agency sees all

    found = client.get("/admin/api/search?q=quero", headers=mine).json["results"]
    assert found and {(row["chat"], row["tenant"]) for row in found} == {(padaria, "padaria")}
    by_tenant = rows_of(postgres_url, "SELECT DISTINCT tenant, chat FROM archive_events ORDER BY tenant")
    assert by_tenant == [("padaria", chat("padaria").key), ("petshop", chat("petshop").key)]
    everyone = client.get("/admin/api/search?q=quero", headers=agency).json["results"]
    assert {row["chat"] for row in everyone} == {padaria, petshop}

    letters = client.get("/admin/api/dead-letters", headers=agency).json
    assert len(letters) == 1
    owner = bearer("token-da-padaria" if letters[0]["chat"] == padaria else "token-do-petshop")
    other = bearer("token-do-petshop" if letters[0]["chat"] == padaria else "token-da-padaria")
    assert client.get("/admin/api/dead-letters", headers=other).json == []
    assert client.delete(f"/admin/api/dead-letters/{letters[0]['id']}", headers=other).status_code == 404
    assert len(client.get("/admin/api/dead-letters", headers=owner).json) == 1
    retried = client.post(f"/admin/api/dead-letters/{letters[0]['id']}/retry", headers=owner)
    assert retried.json["status"] == "sent"
    expected_key = "key-of-the-padaria" if letters[0]["chat"] == padaria else parts.settings.authentication_api_key
    assert fake_evolution.sends()[-1].headers["apikey"] == expected_key  # the tenant's credentials

    assert client.get("/admin/api/usage", headers=mine).status_code == 403  # the deployment's sums
    assert client.get("/admin/api/usage", headers=agency).status_code == 200
    assert client.get(f"/admin/api/chats/{padaria}", headers=bearer("token-errado")).status_code == 401
    parts.archive.store.close()  # type: ignore[union-attr]


def rows_of(url: str, sql: str) -> list[tuple[object, ...]]:
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def test_two_tenants_with_one_admin_token_are_refused(tmp_path: Path) -> None:
    text = (
        "[tenants.a]\nevolution_instances = ['a']\nADMIN_TOKEN = 'same'\n"
        "[tenants.b]\nevolution_instances = ['b']\nADMIN_TOKEN = 'same'\n"
    )
    with pytest.raises(TenantsError, match="ADMIN_TOKEN is the same as tenant a's"):
        parse_tenants(text, make_settings(), folder=tmp_path)


# ----- the tenants' knowledge within a memory budget --------------------------------------------------------


def test_knowledge_bases_stay_within_the_budget_least_recently_used_first(tmp_path: Path) -> None:
    from knowledge import KnowledgeBase, KnowledgeCache

    bases = {}
    for name in ("a", "b", "c"):
        folder = tmp_path / name
        folder.mkdir()
        text = "\n\n".join(
            f"## Produto {n} da loja {name}\n\nO item {n} da loja {name} custa R$ {n},00." for n in range(60)
        )
        (folder / "produtos.md").write_text(text, encoding="utf-8")
        bases[name] = KnowledgeBase(str(folder), whole_max_chars=0)
    probe = KnowledgeBase(str(tmp_path / "a"), whole_max_chars=0)
    one = probe.reload().approx_bytes()
    cache = KnowledgeCache(int(one * 2.5))  # room for two of the three
    for base in bases.values():
        base.cache = cache

    assert "loja a" in bases["a"].context_for([], "quanto custa o item 7?")
    assert "loja b" in bases["b"].context_for([], "quanto custa o item 7?")
    assert (cache.health()["loaded"], cache.evictions) == (2, 0)
    assert "loja c" in bases["c"].context_for([], "quanto custa o item 7?")  # a, the least recently used, goes
    assert (bases["a"].loaded, bases["b"].loaded, bases["c"].loaded) == (False, True, True)
    assert cache.loaded_bytes() <= cache.budget_bytes and cache.evictions == 1
    assert "loja a" in bases["a"].context_for([], "quanto custa o item 7?")  # read again; now b goes
    assert (bases["a"].loaded, bases["b"].loaded, cache.loads, cache.evictions) == (True, False, 4, 2)
    assert 0.5 < one / (len((tmp_path / "a" / "produtos.md").read_text()) * 3) < 20  # a sane estimate


def test_replies_that_need_a_base_at_once_read_it_once(tmp_path: Path) -> None:
    import threading

    from knowledge import KnowledgeBase, KnowledgeCache

    folder = tmp_path / "loja"
    folder.mkdir()
    text = "\n\n".join(f"## Produto {n}\n\nO item {n} custa R$ {n},00." for n in range(200))
    (folder / "produtos.md").write_text(text, encoding="utf-8")
    cache = KnowledgeCache(64 * 1024 * 1024)
    base = KnowledgeBase(str(folder), whole_max_chars=0, cache=cache)
    start = threading.Barrier(16)
    blocks: list[str] = []

    def reply() -> None:
        start.wait()
        blocks.append(base.context_for([], "quanto custa o item 7?"))

    threads = [threading.Thread(target=reply) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(blocks) == 16 and all("R$ 7,00" in block for block in blocks)
    assert (cache.loads, cache.health()["loaded"]) == (1, 1)  # the others waited for that read


def test_a_tenants_token_opens_a_panel_of_its_own_chats(
    make_app: Callable[..., Flask], tenants_dir: Path, fake_evolution: FakeEvolution
) -> None:
    from tests.test_console import log_in

    path = tenants_dir / "tenants.toml"
    path.write_text(TWO_TENANTS + 'ADMIN_TOKEN = "token-do-petshop"\n', encoding="utf-8")
    app = make_app(tenants_file=str(path), admin_token="token-da-agencia", tenants_reload_seconds=0.05)
    parts: Components = app.extensions["assistant"]
    post(app, "padaria", "Quero pão de queijo", "W1")
    post(app, "petshop", "Quero banho e tosa", "W2")
    answer_all(parts)
    padaria, petshop = chat("padaria").key, chat("petshop").key

    tenant = app.test_client()
    log_in(tenant, "token-do-petshop")
    rows = tenant.get("/admin/chats/rows").text
    assert "petshop" in rows and "padaria" not in rows
    nav = tenant.get("/admin/").text
    assert ">Status</a>" not in nav and ">Simulador</a>" not in nav  # no link to the deployment's pages
    assert ">Conhecimento</a>" in nav  # its own knowledge (tests/test_tenant_knowledge.py)
    assert tenant.get(f"/admin/chats/{quote(petshop)}").status_code == 200
    assert tenant.get(f"/admin/chats/{quote(padaria)}").status_code == 404  # as if it did not exist
    assert tenant.get("/admin/status").status_code == 403  # the deployment's pages

    agency = app.test_client()
    log_in(agency, "token-da-agencia")
    rows = agency.get("/admin/chats/rows").text
    assert "petshop" in rows and "padaria" in rows
    assert agency.get(f"/admin/chats/{quote(padaria)}").status_code == 200
    assert agency.get("/admin/knowledge").status_code == 200
    assert ">Status</a>" in agency.get("/admin/").text

    path.write_text(TWO_TENANTS, encoding="utf-8")  # the tenant's token is gone: its session ends
    time.sleep(0.1)
    assert tenant.get("/admin/chats/rows").status_code == 302


def test_reload_context_reaches_the_tenants_knowledge(
    make_app: Callable[..., Flask], tenants_dir: Path, fake_gemini: FakeGemini
) -> None:
    app = make_app(tenants_file=str(tenants_dir / "tenants.toml"), admin_token="token-da-agencia")
    parts: Components = app.extensions["assistant"]
    post(app, "padaria", "Quanto custa o pão?", "R1")
    answer_all(parts)
    assert "R$ 0,90" in system_text(fake_gemini.prompts()[-1])

    (tenants_dir / "padaria-kb" / "precos.md").write_text("# Preços\n\nPão francês custa R$ 1,20.\n", encoding="utf-8")
    post(app, "padaria", "E agora?", "R2")
    answer_all(parts)
    assert "R$ 0,90" in system_text(fake_gemini.prompts()[-1])  # loaded once, kept until asked
    reloaded = app.test_client().post("/reload-context", headers=bearer("token-da-agencia"))
    assert reloaded.status_code == 200, reloaded.text
    post(app, "padaria", "E o preço novo?", "R3")
    answer_all(parts)
    assert "R$ 1,20" in system_text(fake_gemini.prompts()[-1])


def test_a_tenants_changed_settings_take_its_old_knowledge_out_of_the_cache(
    make_app: Callable[..., Flask], tenants_dir: Path, fake_gemini: FakeGemini
) -> None:
    path = tenants_dir / "tenants.toml"
    app = make_app(tenants_file=str(path), tenants_reload_seconds=0.05)
    parts: Components = app.extensions["assistant"]
    post(app, "padaria", "Quanto custa o pão?", "K1")
    answer_all(parts)
    assert parts.knowledge_cache.health()["loaded"] == 1

    path.write_text(TWO_TENANTS.replace('GEMINI_MODEL = "gemini-padaria"', 'GEMINI_MODEL = "gemini-nova"'), "utf-8")
    time.sleep(0.1)
    post(app, "padaria", "E o bolo?", "K2")
    answer_all(parts)
    assert fake_gemini.received()[-1].path.split("/")[-1].startswith("gemini-nova")
    assert parts.knowledge_cache.health()["loaded"] == 1  # the replaced setup's index is no longer counted


# ----- webhooks signed with a business's own secrets (Twilio sub-accounts, Meta apps) -----------------------

AGENCY_TWILIO = "AC0000000000000000000000000000agency"
TWILIO_NUMBERS = {"padaria": "whatsapp:+5511900000001", "petshop": "whatsapp:+5511900000002"}
AGENCY_NUMBER = "whatsapp:+5511900000003"  # a business on the agency's own account
PUBLIC_URL = "https://bot.example.com"

SUB_ACCOUNTS = """
[tenants.padaria]
twilio_numbers = ["+5511900000001"]
TWILIO_ACCOUNT_SID = "AC0000000000000000000000000padaria"
TWILIO_AUTH_TOKEN = "token-da-padaria"
DEBOUNCE_SECONDS = 0

[tenants.petshop]
twilio_numbers = ["+5511900000002"]
TWILIO_ACCOUNT_SID = "AC0000000000000000000000000petshop"
TWILIO_AUTH_TOKEN = "token-do-petshop"
DEBOUNCE_SECONDS = 0

[tenants.mercado]
twilio_numbers = ["+5511900000003"]
DEBOUNCE_SECONDS = 0
"""


@pytest.fixture
def twilio_api() -> Iterator[FakeTwilio]:
    fake = FakeTwilio()
    yield fake
    fake.close()


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    fake = FakeGraph()
    yield fake
    fake.close()


def twilio_env(api_url: str) -> dict[str, object]:
    return dict(
        twilio_account_sid=AGENCY_TWILIO,
        twilio_auth_token="token-da-agencia",
        twilio_whatsapp_from="whatsapp:+14155550100",
        twilio_public_url=PUBLIC_URL,
        twilio_api_url=api_url,
    )


def post_twilio(app: Flask, to: str, token: str, message_id: str, **fields: str) -> int:
    form = twilio_form(To=to, MessageSid=message_id, SmsMessageSid=message_id, SmsSid=message_id, **fields)
    signature = twilio_signature(f"{PUBLIC_URL}/webhook/twilio", form, token)
    return app.test_client().post("/webhook/twilio", data=form, headers={"X-Twilio-Signature": signature}).status_code


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_a_twilio_sub_account_signs_its_numbers_webhooks_and_sends_their_replies(
    make_app: Callable[..., Flask], tmp_path: Path, twilio_api: FakeTwilio
) -> None:
    app = app_with_tenants(make_app, tmp_path, SUB_ACCOUNTS, **twilio_env(twilio_api.url))
    parts: Components = app.extensions["assistant"]
    padaria = "AC0000000000000000000000000padaria"

    signed_by_own = post_twilio(app, TWILIO_NUMBERS["padaria"], "token-da-padaria", "SM1", AccountSid=padaria)
    assert signed_by_own == 200
    assert post_twilio(app, TWILIO_NUMBERS["padaria"], "token-do-petshop", "SM2", AccountSid=padaria) == 401
    assert post_twilio(app, TWILIO_NUMBERS["padaria"], "token-da-agencia", "SM3", AccountSid=padaria) == 401
    # Signed with its token, but posted for another account: not the sub-account the business set.
    assert post_twilio(app, TWILIO_NUMBERS["padaria"], "token-da-padaria", "SM4", AccountSid=AGENCY_TWILIO) == 401
    # A business without its own account: the environment's token.
    assert post_twilio(app, AGENCY_NUMBER, "token-da-agencia", "SM5", AccountSid=AGENCY_TWILIO) == 200
    assert post_twilio(app, AGENCY_NUMBER, "token-da-padaria", "SM6", AccountSid=AGENCY_TWILIO) == 401
    # A number nobody claims: checked with the environment's token, then ignored (no_tenant).
    assert post_twilio(app, "whatsapp:+5511900000009", "token-da-padaria", "SM7") == 401
    assert post_twilio(app, "whatsapp:+5511900000009", "token-da-agencia", "SM8") == 200
    health = app.test_client().get("/health").json
    assert health["counters"]["signature_failures"] == 5 and health["counters"]["ignored"] == 1

    assert answer_all(parts) == 2
    sends = {parse_qs(send.body.decode())["From"][0]: send for send in twilio_api.received()}
    assert set(sends) == {TWILIO_NUMBERS["padaria"], AGENCY_NUMBER}  # from the number each customer wrote to
    own = sends[TWILIO_NUMBERS["padaria"]]
    assert own.path == f"/2010-04-01/Accounts/{padaria}/Messages.json"
    assert own.headers["authorization"] == basic_auth(padaria, "token-da-padaria")
    agency = sends[AGENCY_NUMBER]
    assert agency.path == f"/2010-04-01/Accounts/{AGENCY_TWILIO}/Messages.json"
    assert agency.headers["authorization"] == basic_auth(AGENCY_TWILIO, "token-da-agencia")


APPS = """
[tenants.padaria]
meta_phone_number_ids = ["111111111111111"]
META_APP_SECRET = "segredo-do-app-da-padaria"
META_VERIFY_TOKEN = "verifica-padaria"
META_ACCESS_TOKEN = "token-meta-da-padaria"
DEBOUNCE_SECONDS = 0

[tenants.petshop]
meta_phone_number_ids = ["222222222222222"]
DEBOUNCE_SECONDS = 0
"""


def meta_env(graph_url: str) -> dict[str, object]:
    return dict(
        meta_app_secret="segredo-do-app-da-agencia",
        meta_verify_token="verifica-agencia",
        meta_access_token="token-meta-da-agencia",
        meta_phone_number_id="999999999999999",
        meta_graph_url=graph_url,
    )


def meta_value(phone_number_id: str, message_id: str) -> dict[str, object]:
    message = {"from": "5511987654321", "id": message_id, "timestamp": "1763900000", "type": "text"}
    return {
        "messaging_product": "whatsapp",
        "metadata": {"phone_number_id": phone_number_id},
        "messages": [{**message, "text": {"body": "Oi, tem horário hoje?"}}],
    }


def post_meta_signed(app: Flask, secret: str, *values: dict[str, object]) -> tuple[int, dict[str, object]]:
    changes = [{"field": "messages", "value": value} for value in values]
    raw = json.dumps({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": changes}]}).encode()
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign_meta(raw, secret)}
    answer = app.test_client().post("/webhook/meta", data=raw, headers=headers)
    return answer.status_code, answer.json


def test_a_meta_body_counts_only_for_the_businesses_whose_app_signed_it(
    make_app: Callable[..., Flask], tmp_path: Path, graph: FakeGraph
) -> None:
    app = app_with_tenants(make_app, tmp_path, APPS, **meta_env(graph.url))
    parts: Components = app.extensions["assistant"]
    padaria, petshop = "111111111111111", "222222222222222"
    own, agency = "segredo-do-app-da-padaria", "segredo-do-app-da-agencia"

    assert post_meta_signed(app, own, meta_value(padaria, "wamid.A1")) == (
        200,
        {"status": "buffered", "buffered": 1, "duplicates": 0, "ignored": 0},
    )
    assert post_meta_signed(app, own, meta_value(petshop, "wamid.A2")) == (
        200,
        {"status": "ignored", "reason": "wrong_app"},
    )
    assert post_meta_signed(app, agency, meta_value(padaria, "wamid.A3"))[1]["reason"] == "wrong_app"
    assert post_meta_signed(app, agency, meta_value(petshop, "wamid.A4"))[1]["buffered"] == 1
    both = post_meta_signed(app, own, meta_value(padaria, "wamid.A5"), meta_value(petshop, "wamid.A6"))
    assert both == (200, {"status": "buffered", "buffered": 1, "duplicates": 0, "ignored": 1})
    assert post_meta_signed(app, "segredo-de-outro-app", meta_value(padaria, "wamid.A7"))[0] == 401

    handshake = {"hub.mode": "subscribe", "hub.challenge": "4242"}
    client = app.test_client()
    for token, status in (("verifica-padaria", 200), ("verifica-agencia", 200), ("verifica-outro", 403)):
        assert client.get("/webhook/meta", query_string={**handshake, "hub.verify_token": token}).status_code == status

    assert answer_all(parts) == 2  # one burst per chat: what the wrong app signed was never buffered
    texts = [send for send in graph.received() if "text" in send.json]
    sends = {send.path.split("/")[2]: send for send in texts}
    assert len(texts) == 2 and set(sends) == {padaria, petshop}
    assert sends[padaria].headers["authorization"] == "Bearer token-meta-da-padaria"
    assert sends[petshop].headers["authorization"] == "Bearer token-meta-da-agencia"


def test_one_business_keeps_the_environments_webhook_secrets(
    make_app: Callable[..., Flask], twilio_api: FakeTwilio, graph: FakeGraph
) -> None:
    """Without TENANTS_FILE: the environment's token and secret, replies from TWILIO_WHATSAPP_FROM, as before."""
    app = make_app(**twilio_env(twilio_api.url), **meta_env(graph.url), debounce_seconds=0)
    parts: Components = app.extensions["assistant"]
    assert post_twilio(app, AGENCY_NUMBER, "token-da-agencia", "SM1") == 200
    assert post_twilio(app, AGENCY_NUMBER, "token-da-padaria", "SM2") == 401
    assert post_meta_signed(app, "segredo-do-app-da-agencia", meta_value("111111111111111", "wamid.B1"))[0] == 200
    assert post_meta_signed(app, "segredo-do-app-da-padaria", meta_value("111111111111111", "wamid.B2"))[0] == 401
    assert answer_all(parts) == 2
    (sent,) = twilio_api.received()
    assert parse_qs(sent.body.decode())["From"] == ["whatsapp:+14155550100"]
    assert sent.headers["authorization"] == basic_auth(AGENCY_TWILIO, "token-da-agencia")


# ----- what a person on a business's phone types --------------------------------------------------------------


def post_from_business(app: Flask, instance: str, text: str, message_id: str) -> dict[str, object]:
    key = {"remoteJid": CUSTOMER, "fromMe": True, "id": message_id}
    body = {"event": "messages.upsert", "instance": instance, "data": {"key": key, "message": {"conversation": text}}}
    response = app.test_client().post("/webhook", json=body)
    assert response.status_code == 200, response.text
    return response.json


def test_each_business_has_its_own_phone_commands_and_idle_time(
    make_app: Callable[..., Flask], tenants_dir: Path, redis_client: object
) -> None:
    own = 'BOT_PAUSE_KEYWORD = "#atendente"\nBOT_RESUME_KEYWORD = "#robo"\nCONVERSATION_IDLE_MINUTES = 30\n'
    text = TWO_TENANTS.replace("[tenants.petshop]", own + "\n[tenants.petshop]")
    app = app_with_tenants(make_app, tenants_dir, text, handoff_pause_minutes=120.0, conversation_idle_minutes=1440.0)
    parts: Components = app.extensions["assistant"]

    def paused_until(instance: str) -> float:
        return parts.conversations.status(chat(instance)).paused_until

    assert post_from_business(app, "padaria", "#atendente", "B1")["human"] == 1
    assert paused_until("padaria") == math.inf  # its pause command: until resumed
    assert post_from_business(app, "petshop", "#atendente", "B2")["human"] == 1
    assert paused_until("petshop") < math.inf  # only a person's message there: paused for HANDOFF_PAUSE_MINUTES
    post_from_business(app, "petshop", "#robo", "B3")
    assert parts.conversations.status(chat("petshop")).state_at(time.time(), 1800) == "paused"  # not its resume
    assert post_from_business(app, "petshop", "#humano", "B4")["human"] == 1
    assert paused_until("petshop") == math.inf  # the environment's command
    post_from_business(app, "padaria", "#robo", "B5")
    assert parts.conversations.status(chat("padaria")).state_at(time.time(), 1800) == "open"
    assert parts.buffer.pending_info(chat("padaria")) is None  # commands are never kept as text

    # A conversation's record lives its business's idle time (plus a day for the API to show it).
    ttl = {name: redis_client.ttl(parts.keys.conversation(chat(name).key)) for name in ("padaria", "petshop")}  # type: ignore[attr-defined]
    assert 30 * 60 + 86400 - 5 <= ttl["padaria"] <= 30 * 60 + 86400
    assert ttl["petshop"] > 1440 * 60


def test_a_tenant_called_default_keeps_the_single_business_keys(
    make_app: Callable[..., Flask], tmp_path: Path, fake_gemini: FakeGemini, fake_evolution: FakeEvolution
) -> None:
    """Moving a one-business deployment into TENANTS_FILE under the id `default` keeps its history."""
    single = make_app(debounce_seconds=0)
    single_parts: Components = single.extensions["assistant"]
    post(single, "loja", "Meu nome é Joana", "S1")
    answer_all(single_parts)
    text = "[tenants.default]\nevolution_instances = ['loja']\nBUSINESS_NAME = 'Loja'\n"
    app = app_with_tenants(make_app, tmp_path, text, debounce_seconds=0)
    parts: Components = app.extensions["assistant"]
    post(app, "loja", "Lembra meu nome?", "S2")
    answer_all(parts)
    assert "Joana" in str(fake_gemini.prompts()[-1]["contents"])
    assert parts.keys.history(f"evolution:loja:{CUSTOMER}") in set(parts.link.client.scan_iter("*"))  # type: ignore[union-attr]
