"""A tenant's knowledge for its admin (GET /context/preview and the panel's Conhecimento page), read through the
same KnowledgeCache the replies use; the 403 page a tenant's session gets on the deployment's pages; and the
knowledge watcher noticing a tenant's edited folder (RAG_AUTO_RELOAD) without reading folders nobody loaded."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from components import Components
from knowledge import KnowledgeBase, KnowledgeCache
from tests.fakes import FakeGemini
from tests.test_console import csrf_of, log_in
from tests.test_tenants import TWO_TENANTS, answer_all, bearer, post, system_text

AGENCY, PADARIA, PETSHOP = "token-da-agencia", "token-da-padaria", "token-do-petshop"
WITH_TOKENS = (
    TWO_TENANTS.replace("[tenants.petshop]", f'ADMIN_TOKEN = "{PADARIA}"\n\n[tenants.petshop]')
    + f'ADMIN_TOKEN = "{PETSHOP}"\n'
)
REFUSED_TEXT = "Esta página é da implantação inteira; entre com o token do administrador geral."


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Two tenants with their own knowledge and admin tokens, and the environment's own knowledge beside them."""
    (tmp_path / "padaria.txt").write_text("Você é a Ana, da Padaria Pão Quente.", encoding="utf-8")
    for name, fact in (
        ("padaria-kb", "Pão francês custa R$ 0,90."),
        ("petshop-kb", "Banho de cão pequeno: R$ 55."),
        ("ambiente-kb", "Atendimento geral da agência."),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "precos.md").write_text(f"# Preços\n\n{fact}\n", encoding="utf-8")
    (tmp_path / "tenants.toml").write_text(WITH_TOKENS, encoding="utf-8")
    return tmp_path


@pytest.fixture
def tenant_app(make_app: Callable[..., Flask], folder: Path) -> Flask:
    # A watch interval far away: the tests make the watcher's looks themselves (check_once).
    return make_app(
        tenants_file=str(folder / "tenants.toml"),
        admin_token=AGENCY,
        knowledge_dir=str(folder / "ambiente-kb"),
        rag_watch_interval=3600.0,
    )


def preview(app: Flask, token: str, query: str = "") -> tuple[int, dict[str, object]]:
    response = app.test_client().get(f"/context/preview{query}", headers=bearer(token))
    return response.status_code, response.json


# ----- GET /context/preview ---------------------------------------------------------------------------------


def test_a_tenants_token_previews_its_own_knowledge_and_nobody_elses(tenant_app: Flask) -> None:
    status, body = preview(tenant_app, PADARIA, "?n=500")
    assert status == 200, body
    assert body["tenant"] == "padaria"
    assert [f["path"] for f in body["files"]] == ["precos.md"]  # type: ignore[index, union-attr]
    assert "Pão francês" in str(body["preview"]) and "Banho" not in str(body["preview"])
    assert body["mode"] == "whole" and body["chunks"] == 1

    status, body = preview(tenant_app, PADARIA, "?q=quanto+custa+o+pao&n=0")
    assert status == 200
    assert [hit["source"] for hit in body["hits"]] == ["precos.md"]  # type: ignore[index, union-attr]
    assert "R$ 0,90" in body["hits"][0]["text"]  # type: ignore[index]
    assert preview(tenant_app, PADARIA, "?tenant=padaria")[0] == 200  # naming itself is fine

    # Another tenant's id and an id nobody has get the same answer: nothing tells that petshop exists.
    other, unknown = preview(tenant_app, PADARIA, "?tenant=petshop"), preview(tenant_app, PADARIA, "?tenant=nada")
    assert (other[0], unknown[0]) == (404, 404)
    assert other[1]["error"] == unknown[1]["error"] == "unknown tenant"
    assert "Banho" not in str(other[1])
    assert tenant_app.test_client().post("/reload-context", headers=bearer(PADARIA)).status_code == 403


def test_the_deployments_token_sees_the_environment_and_chooses_a_tenant(tenant_app: Flask) -> None:
    status, body = preview(tenant_app, AGENCY)
    assert (status, body["tenant"]) == (200, None)
    assert "Atendimento geral" in str(body["preview"])  # the environment's KNOWLEDGE_DIR

    status, body = preview(tenant_app, AGENCY, "?tenant=petshop&q=banho")
    assert (status, body["tenant"]) == (200, "petshop")
    assert "Banho de cão" in str(body["preview"]) and "Atendimento geral" not in str(body["preview"])
    assert "R$ 55" in body["hits"][0]["text"]  # type: ignore[index]
    assert preview(tenant_app, AGENCY, "?tenant=nada")[0] == 404


def test_the_preview_reads_through_the_cache_the_replies_use(tenant_app: Flask, fake_gemini: FakeGemini) -> None:
    parts: Components = tenant_app.extensions["assistant"]
    assert parts.knowledge_cache.health()["loaded"] == 0
    assert preview(tenant_app, PADARIA)[0] == 200
    assert (parts.knowledge_cache.health()["loaded"], parts.knowledge_cache.loads) == (1, 1)

    post(tenant_app, "padaria", "Quanto custa o pão?", "C1")
    answer_all(parts)
    assert "R$ 0,90" in system_text(fake_gemini.prompts()[-1])
    assert parts.knowledge_cache.loads == 1  # the reply used the very index the preview loaded


def test_a_single_tenant_deployment_has_no_tenant_to_choose(make_app: Callable[..., Flask], folder: Path) -> None:
    app = make_app(admin_token=AGENCY, knowledge_dir=str(folder / "ambiente-kb"))
    assert preview(app, AGENCY)[0] == 200
    assert preview(app, AGENCY, "?tenant=default")[0] == 404


# ----- the panel ----------------------------------------------------------------------------------------------


def test_a_tenants_session_sees_its_knowledge_page(tenant_app: Flask) -> None:
    client = tenant_app.test_client()
    csrf = log_in(client, PETSHOP)
    page = client.get("/admin/knowledge?q=banho")
    assert page.status_code == 200, page.text
    assert "Pet Shop Amigo Fiel" in page.text and "precos.md" in page.text
    assert "Modo: <strong>base inteira em cada resposta</strong>" in page.text  # the owner's words, not `whole`
    assert "R$ 55" in page.text and "Pão francês" not in page.text
    assert 'id="reload"' not in page.text and 'id="tenant"' not in page.text  # no reload, no tenant selector

    for path in ("/admin/knowledge?tenant=padaria", "/admin/knowledge?tenant=nada"):
        refused = client.get(path)
        assert refused.status_code == 404 and "Empresa não encontrada" in refused.text
        assert "Pão francês" not in refused.text
    reload = client.post("/admin/knowledge", data={"csrf_token": csrf})
    assert reload.status_code == 403 and REFUSED_TEXT in reload.text


def test_the_deployments_session_chooses_a_tenant_in_the_knowledge_page(tenant_app: Flask) -> None:
    client = tenant_app.test_client()
    log_in(client, AGENCY)
    page = client.get("/admin/knowledge").text
    assert 'id="tenant"' in page and "Empresa" in page and "Ambiente (KNOWLEDGE_DIR)" in page
    assert '<option value="padaria">Padaria Pão Quente (padaria)</option>' in page
    chosen = client.get("/admin/knowledge?tenant=padaria&q=pao")
    assert chosen.status_code == 200
    assert "R$ 0,90" in chosen.text and "Banho" not in chosen.text
    assert '<option value="padaria" selected>' in chosen.text
    assert '<input type="hidden" name="tenant" value="padaria">' in chosen.text  # the question keeps the tenant
    assert client.get("/admin/knowledge?tenant=nada").status_code == 404

    csrf = csrf_of(chosen.text)
    reloaded = client.post("/admin/knowledge?tenant=padaria", data={"csrf_token": csrf})
    assert reloaded.status_code == 200 and "Base de conhecimento recarregada." in reloaded.text


# ----- the deployment's pages for a tenant's session ---------------------------------------------------------


def test_a_tenants_session_gets_a_page_that_explains_the_refusal(tenant_app: Flask) -> None:
    client = tenant_app.test_client()
    log_in(client, PADARIA)
    for path in ("/admin/status", "/simulator"):
        page = client.get(path)
        assert page.status_code == 403, path
        assert page.mimetype == "text/html", path
        assert REFUSED_TEXT in page.text and ">Conversas</a>" in page.text, path  # the panel's own nav
        assert ">Status</a>" not in page.text
    api = client.post("/simulator/api/messages", json={"number": "5511999990000", "text": "oi"})
    assert (api.status_code, api.mimetype, api.json["error"]) == (403, "application/json", "forbidden")
    usage = tenant_app.test_client().get("/admin/api/usage", headers=bearer(PADARIA))
    assert (usage.status_code, usage.mimetype) == (403, "application/json")  # the JSON API stays JSON

    agency = tenant_app.test_client()
    log_in(agency, AGENCY)
    assert agency.get("/admin/status").status_code == 200
    assert agency.get("/simulator").status_code == 200


# ----- RAG_AUTO_RELOAD and the tenants' folders --------------------------------------------------------------


@pytest.mark.parametrize("auto_reload", [True, False])
def test_the_watcher_notices_an_edit_of_a_loaded_tenants_folder(
    make_app: Callable[..., Flask], folder: Path, fake_gemini: FakeGemini, auto_reload: bool
) -> None:
    app = make_app(tenants_file=str(folder / "tenants.toml"), rag_auto_reload=auto_reload, rag_watch_interval=3600.0)
    parts: Components = app.extensions["assistant"]
    post(app, "padaria", "Quanto custa o pão?", "W1")
    answer_all(parts)
    assert "R$ 0,90" in system_text(fake_gemini.prompts()[-1])
    assert parts.watcher.check_once() is False  # nothing changed yet

    edited = folder / "padaria-kb" / "precos.md"
    edited.write_text("# Preços\n\nPão francês custa R$ 1,20.\n", encoding="utf-8")
    (folder / "petshop-kb" / "precos.md").write_text("# Preços\n\nBanho: R$ 60.\n", encoding="utf-8")
    loads = parts.knowledge_cache.loads
    assert parts.watcher.check_once() is auto_reload
    assert parts.knowledge_cache.loads == loads  # the watcher read nothing: petshop, never used, stays unread
    assert parts.knowledge_cache.health()["loaded"] == (0 if auto_reload else 1)

    post(app, "padaria", "E agora?", "W2")
    answer_all(parts)
    assert ("R$ 1,20" if auto_reload else "R$ 0,90") in system_text(fake_gemini.prompts()[-1])


def test_the_cache_unloads_only_the_loaded_bases_whose_files_changed(tmp_path: Path) -> None:
    cache = KnowledgeCache(10 * 1024 * 1024)
    bases = {}
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "info.md").write_text(f"# Loja {name}\n\nAberta todo dia.\n", encoding="utf-8")
        bases[name] = KnowledgeBase(str(tmp_path / name), cache=cache)
    cache.acquire(bases["a"])
    cache.acquire(bases["b"])
    assert cache.unload_changed() == 0

    for name in ("a", "c"):
        (tmp_path / name / "info.md").write_text(f"# Loja {name}\n\nFechada aos domingos.\n", encoding="utf-8")
    assert cache.unload_changed() == 1  # a; c was never loaded and is not read
    assert (bases["a"].loaded, bases["b"].loaded, bases["c"].loaded) == (False, True, False)
    assert (cache.health()["loaded"], cache.loads) == (1, 2)
    assert "Fechada" in bases["a"].context_for([], "domingo")  # read again at its next use
