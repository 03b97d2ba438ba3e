"""The admin endpoints POST /reload-context and GET /context/preview on the app from the factory, with a real
Redis: ADMIN_TOKEN as a bearer token (401 without it, 404 when unset), bad input -> 400, reloads, previews.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from web.knowledge_admin import MAX_PREVIEW_CHARS

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "knowledge"
ADMIN_TOKEN = "admin-token-teste-5f2c9a"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def kb_dir(tmp_path: Path) -> Path:
    target = tmp_path / "conhecimento"
    shutil.copytree(FIXTURES, target)
    return target


@pytest.fixture
def app_settings(kb_dir: Path) -> dict[str, object]:
    return {"knowledge_dir": str(kb_dir), "admin_token": ADMIN_TOKEN, "rag_auto_reload": False}


# ----- access -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [("POST", "/reload-context"), ("GET", "/context/preview")])
def test_admin_endpoints_are_disabled_without_admin_token(
    make_app: object, kb_dir: Path, method: str, path: str
) -> None:
    client = make_app(knowledge_dir=str(kb_dir), admin_token="").test_client()  # type: ignore[operator]
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer qualquer-coisa"}):
        response = client.open(path, method=method, headers=headers)
        assert response.status_code == 404
        assert "ADMIN_TOKEN is not set" in response.json["detail"]


@pytest.mark.parametrize(("method", "path"), [("POST", "/reload-context"), ("GET", "/context/preview")])
@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing bearer token"),
        ({"Authorization": "Bearer "}, "missing bearer token"),
        ({"Authorization": ADMIN_TOKEN}, "missing bearer token"),
        ({"Authorization": f"Basic {ADMIN_TOKEN}"}, "missing bearer token"),
        ({"X-Admin-Token": ADMIN_TOKEN}, "missing bearer token"),
        ({"Authorization": "Bearer admin-token-teste-5f2c9b"}, "invalid admin token"),
        ({"Authorization": f"Bearer {ADMIN_TOKEN}x"}, "invalid admin token"),
    ],
)
def test_admin_endpoints_refuse_without_the_token(
    client: FlaskClient, method: str, path: str, headers: dict[str, str], reason: str
) -> None:
    response = client.open(path, method=method, headers=headers, query_string={"token": ADMIN_TOKEN})
    assert response.status_code == 401
    assert response.json["error"] == "unauthorized"
    assert response.json["reason"].startswith(reason)
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert "preview" not in response.json and "files" not in response.json


def test_refusals_are_counted_and_never_log_the_token(client: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client.get("/context/preview", headers={"Authorization": "Bearer palpite-errado-123"})
    client.post("/reload-context", headers=AUTH)
    assert client.get("/health").json["counters"]["admin_auth_failures"] == 1
    assert "palpite-errado-123" not in caplog.text and ADMIN_TOKEN not in caplog.text
    assert "admin request refused path=/context/preview: invalid admin token" in caplog.text


def test_scheme_is_case_insensitive(client: FlaskClient) -> None:
    assert client.get("/context/preview", headers={"Authorization": f"bearer {ADMIN_TOKEN}"}).status_code == 200


# ----- GET /context/preview ---------------------------------------------------------------------------------


def test_preview_shows_files_chunks_and_the_first_characters(client: FlaskClient) -> None:
    response = client.get("/context/preview", headers=AUTH, query_string={"n": "120"})
    assert response.status_code == 200
    body = response.json
    assert body["pid"] == os.getpid()
    assert body["mode"] == "whole"
    assert len(body["files"]) == 23
    bolos = (FIXTURES / "produtos" / "bolos.md").read_text(encoding="utf-8").strip()
    assert {"path": "produtos/bolos.md", "chars": len(bolos), "chunks": 3} in body["files"]
    assert body["chunks"] == sum(f["chunks"] for f in body["files"])
    assert body["chars"] == sum(f["chars"] for f in body["files"])
    assert body["problems"] == []
    assert len(body["preview"]) == 120
    assert body["preview"].startswith("--- fonte: conservacao.txt ---\nConservação e validade")


def test_preview_defaults_to_1000_characters(client: FlaskClient) -> None:
    assert len(client.get("/context/preview", headers=AUTH).json["preview"]) == 1000
    assert client.get("/context/preview", headers=AUTH, query_string={"n": "0"}).json["preview"] == ""


@pytest.mark.parametrize("n", ["abc", "", "1e3", "12.5", "-1", str(MAX_PREVIEW_CHARS + 1), "9" * 40])
def test_preview_rejects_a_bad_n(client: FlaskClient, n: str) -> None:
    response = client.get("/context/preview", headers=AUTH, query_string={"n": n})
    assert response.status_code == 400
    assert "n must be" in response.json["detail"]


def test_preview_with_a_question_shows_what_retrieval_finds(client: FlaskClient) -> None:
    response = client.get("/context/preview", headers=AUTH, query_string={"q": "vcs entregam em guarulhos?"})
    hits = response.json["hits"]
    assert hits[0]["source"] == "entrega/entregas.md"
    assert hits[0]["heading"] == "Entregas (delivery) > Onde entregamos e taxa de frete"
    assert "Guarulhos" in hits[0]["text"] and hits[0]["score"] > 0
    assert len(hits) <= 4


def test_preview_reports_bad_files(make_app: object, tmp_path: Path) -> None:
    (tmp_path / "ruim.txt").write_bytes(b"Pre\xe7o: R$ 10")
    client = make_app(knowledge_dir=str(tmp_path), admin_token=ADMIN_TOKEN).test_client()  # type: ignore[operator]
    body = client.get("/context/preview", headers=AUTH).json
    assert body["problems"] == ["ruim.txt: not valid UTF-8 (first bad byte at 3, 1 replaced): save it as UTF-8"]
    assert body["preview"] == "--- fonte: ruim.txt ---\nPre\ufffdo: R$ 10"
    assert client.get("/health").json["knowledge"] == {"mode": "whole", "files": 1, "chunks": 1, "problems": 1}


def test_preview_without_a_knowledge_dir_says_off(make_app: object) -> None:
    client = make_app(knowledge_dir="", admin_token=ADMIN_TOKEN).test_client()  # type: ignore[operator]
    body = client.get("/context/preview", headers=AUTH).json
    assert (body["mode"], body["files"], body["chunks"], body["preview"]) == ("off", [], 0, "")


# ----- POST /reload-context ---------------------------------------------------------------------------------


def test_reload_context_picks_up_changes_now(client: FlaskClient, kb_dir: Path) -> None:
    (kb_dir / "produtos" / "sorvetes.md").write_text("# Sorvetes\nSorvete de pistache: R$ 19,00.", encoding="utf-8")
    (kb_dir / "faq.md").unlink()
    before = client.get("/context/preview", headers=AUTH).json
    assert len(before["files"]) == 23  # RAG_AUTO_RELOAD is off in this app: nothing changes by itself

    response = client.post("/reload-context", headers=AUTH)
    assert response.status_code == 200
    body = response.json
    assert (body["status"], body["pid"], body["all_processes"]) == ("reloaded", os.getpid(), True)
    paths = [f["path"] for f in body["files"]]
    assert "produtos/sorvetes.md" in paths and "faq.md" not in paths
    hits = client.get("/context/preview", headers=AUTH, query_string={"q": "sorvete pistache"}).json["hits"]
    assert hits[0]["source"] == "produtos/sorvetes.md"


def test_reload_context_without_a_knowledge_dir_is_a_conflict(make_app: object) -> None:
    client = make_app(knowledge_dir="", admin_token=ADMIN_TOKEN).test_client()  # type: ignore[operator]
    response = client.post("/reload-context", headers=AUTH)
    assert response.status_code == 409
    assert response.json["detail"] == "KNOWLEDGE_DIR is not set"


def test_reload_context_only_accepts_post(client: FlaskClient) -> None:
    assert client.get("/reload-context", headers=AUTH).status_code == 405
    assert client.post("/context/preview", headers=AUTH).status_code == 405
