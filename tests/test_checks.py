"""`python webhook.py --check` (checks.py): each dependency up and down, against the suite's real redis-server and
PostgreSQL and the local fakes of Gemini, OpenAI and the gateways; secrets never printed; exit codes; and the real
command run as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import checks
from archive.store import ArchiveStore, migrations
from checks import FAIL, OK, SKIP, WARN, Result
from config import Settings
from tests.conftest import ROOT, free_port, make_settings
from tests.fakes import Canned, FakeEvolution, FakeGemini, FakeOpenAI, FakeServer, gemini_error, openai_error
from tests.redis_server import RedisServer

GEMINI_MODEL = {"name": "models/gemini-3-flash-preview", "displayName": "Gemini 3 Flash", "version": "3"}
OPENAI_MODEL = {"id": "gpt-4o-mini", "object": "model", "created": 1700000000, "owned_by": "openai"}


def closed_url(scheme: str = "http") -> str:
    """A URL on a local port that nothing listens on."""
    return f"{scheme}://127.0.0.1:{free_port()}"


def report(results: list[Result], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = checks.print_report(results)
    return code, capsys.readouterr().out


def line_of(name: str, output: str) -> str:
    return next(line for line in output.splitlines() if line.split()[1:2] == [name])


# ----- Redis --------------------------------------------------------------------------------------------------


def test_redis_up_answers_with_its_version(redis_server: RedisServer) -> None:
    result = checks.check_redis(make_settings(redis_uri=redis_server.url))
    assert result.status == OK
    assert result.detail.startswith(f"{redis_server.url} answers (Redis ")


def test_redis_on_a_closed_port_fails_and_says_what_to_do() -> None:
    url = closed_url("redis") + "/0"
    result = checks.check_redis(make_settings(redis_uri=url))
    assert result.status == FAIL
    assert "connection refused" in result.detail and "is Redis running?" in result.detail


def test_redis_disabled_is_skipped() -> None:
    result = checks.check_redis(make_settings(redis_enabled=False, redis_uri=closed_url("redis")))
    assert result.status == SKIP


# ----- Gemini -------------------------------------------------------------------------------------------------


def test_gemini_accepting_the_key_finds_the_model(fake_gemini: FakeGemini) -> None:
    fake_gemini.queue(Canned(body=GEMINI_MODEL))
    result = checks.check_gemini(make_settings(gemini_base_url=fake_gemini.url))
    assert result == Result(OK, "gemini", f"{fake_gemini.url} answers; model gemini-3-flash-preview found")
    (request,) = fake_gemini.received()
    assert request.method == "GET" and request.path.endswith("/models/gemini-3-flash-preview")
    assert request.headers["x-goog-api-key"] == "test-gemini-key"


def test_gemini_answering_403_means_the_key_is_rejected_and_is_not_retried(fake_gemini: FakeGemini) -> None:
    fake_gemini.queue(Canned(403, gemini_error(403, "PERMISSION_DENIED")), Canned(body=GEMINI_MODEL))
    result = checks.check_gemini(make_settings(gemini_base_url=fake_gemini.url))
    assert result == Result(
        FAIL, "gemini", "GEMINI_API_KEY rejected (403 PERMISSION_DENIED): check the key in Google AI Studio"
    )
    assert len(fake_gemini.received()) == 1


def test_gemini_answering_404_means_the_model_is_not_found(fake_gemini: FakeGemini) -> None:
    fake_gemini.queue(Canned(404, gemini_error(404, "NOT_FOUND")))
    result = checks.check_gemini(make_settings(gemini_base_url=fake_gemini.url, gemini_model="gemini-9"))
    assert result.status == FAIL and "model 'gemini-9' not found" in result.detail


def test_gemini_unreachable() -> None:
    url = closed_url()
    result = checks.check_gemini(make_settings(gemini_base_url=url))
    assert result == Result(
        FAIL, "gemini", f"{url} unreachable (connection refused): check the network or GEMINI_BASE_URL"
    )


def test_no_model_configured_fails_unless_dry_run() -> None:
    result = checks.check_gemini(make_settings(gemini_api_key=""))
    assert result.status == FAIL and result.detail.startswith("no model configured: set GEMINI_API_KEY")
    assert checks.check_gemini(make_settings(gemini_api_key="", ai_dry_run=True)).status == SKIP


# ----- OpenAI -------------------------------------------------------------------------------------------------


def openai_settings(fake_openai: FakeOpenAI, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "ai_provider": "openai",
        "openai_api_key": "sk-test-openai-key",
        "openai_base_url": fake_openai.url + "/v1",
    }
    return make_settings(**{**values, **overrides})


def test_openai_ok(fake_openai: FakeOpenAI) -> None:
    fake_openai.queue(Canned(body=OPENAI_MODEL))
    result = checks.check_openai(openai_settings(fake_openai))
    assert result == Result(OK, "openai", f"{fake_openai.url}/v1 answers; model gpt-4o-mini found")
    (request,) = fake_openai.received()
    assert request.path == "/v1/models/gpt-4o-mini"
    assert request.headers["authorization"] == "Bearer sk-test-openai-key"


def test_openai_answering_401_means_the_key_is_rejected(fake_openai: FakeOpenAI) -> None:
    fake_openai.queue(Canned(401, openai_error(401, "Incorrect API key provided: sk-test-openai-key")))
    result = checks.check_openai(openai_settings(fake_openai))
    assert result.status == FAIL and result.detail.startswith("OPENAI_API_KEY rejected (401)")
    assert len(fake_openai.received()) == 1  # max_retries=0


def test_a_failing_fallback_is_a_warning_and_an_unused_provider_is_skipped(fake_openai: FakeOpenAI) -> None:
    fake_openai.queue(Canned(401, openai_error(401)))
    fallback = openai_settings(fake_openai, ai_provider="gemini", ai_fallback_provider="openai")
    result = checks.check_openai(fallback)
    assert result.status == WARN and result.detail.endswith("(not required: fallback)")
    unused = checks.check_openai(make_settings())
    assert unused == Result(SKIP, "openai", "not used (AI_PROVIDER=gemini, no AI_FALLBACK_PROVIDER)")


# ----- gateways -----------------------------------------------------------------------------------------------


def test_evolution_base_url_lists_its_instances(fake_evolution: FakeEvolution) -> None:
    fake_evolution.queue(
        Canned(body=[{"name": "loja", "connectionStatus": "open"}, {"name": "b", "connectionStatus": "close"}])
    )
    result = checks.check_evolution(make_settings(evolution_api=fake_evolution.url))
    assert result == Result(OK, "evolution", f"{fake_evolution.url} answers; instances: 'loja' open, 'b' close")
    (request,) = fake_evolution.received()
    assert request.path == "/instance/fetchInstances" and request.headers["apikey"] == "test-evolution-key"


def test_evolution_send_url_asks_for_its_instance_state(fake_evolution: FakeEvolution) -> None:
    send_url = f"{fake_evolution.url}/message/sendText/loja"
    fake_evolution.queue(
        Canned(body={"instance": {"instanceName": "loja", "state": "open"}}),
        Canned(body={"instance": {"instanceName": "loja", "state": "close"}}),
        Canned(
            404, {"status": 404, "error": "Not Found", "response": {"message": ['The "loja" instance does not exist']}}
        ),
    )
    assert checks.check_evolution(make_settings(evolution_api=send_url)) == Result(
        OK, "evolution", f"{fake_evolution.url} answers; instance 'loja' state: open"
    )
    closed = checks.check_evolution(make_settings(evolution_api=send_url))
    assert closed.status == FAIL and "state: close" in closed.detail
    assert checks.check_evolution(make_settings(evolution_api=send_url)) == Result(
        FAIL, "evolution", f"{fake_evolution.url}: instance 'loja' of EVOLUTION_API not found (404): check it"
    )
    assert [r.path for r in fake_evolution.received()] == ["/instance/connectionState/loja"] * 3


def test_evolution_answering_401_means_a_bad_key(fake_evolution: FakeEvolution) -> None:
    fake_evolution.queue(Canned(401, {"status": 401, "error": "Unauthorized"}))
    result = checks.check_evolution(make_settings(evolution_api=fake_evolution.url))
    assert result == Result(FAIL, "evolution", "AUTHENTICATION_API_KEY rejected (401): check it")


def test_evolution_unreachable() -> None:
    url = closed_url()
    result = checks.check_evolution(make_settings(evolution_api=url))
    assert result.status == FAIL and result.detail.startswith(f"{url} unreachable (connection refused)")


def test_meta_and_twilio_with_their_credentials() -> None:
    graph, twilio = FakeServer(), FakeServer()
    try:
        graph.queue(Canned(body={"display_phone_number": "+55 11 4000-0000", "verified_name": "Loja", "id": "123"}))
        twilio.queue(Canned(401, {"code": 20003, "message": "Authenticate"}))
        settings = make_settings(
            meta_app_secret="app-secret",
            meta_verify_token="verify-token",
            meta_access_token="meta-access-token",
            meta_phone_number_id="123",
            meta_graph_url=graph.url,
            twilio_account_sid="AC123",
            twilio_auth_token="twilio-auth-token",
            twilio_whatsapp_from="whatsapp:+5511",
            twilio_public_url="https://bot.example.com",
            twilio_api_url=twilio.url,
        )
        assert checks.check_meta(settings) == Result(
            OK, "meta", f"{graph.url}/v23.0 answers; phone number +55 11 4000-0000 (Loja)"
        )
        assert graph.received()[0].path == "/v23.0/123"
        assert graph.received()[0].headers["authorization"] == "Bearer meta-access-token"
        assert (
            checks.check_twilio(settings).detail == "TWILIO_ACCOUNT_SID or TWILIO_AUTH_TOKEN rejected (401): check it"
        )
        assert twilio.received()[0].path == "/2010-04-01/Accounts/AC123.json"
    finally:
        graph.close()
        twilio.close()


def test_gateways_not_configured_are_skipped_and_partly_configured_warned() -> None:
    assert checks.check_mega(make_settings()) == Result(SKIP, "mega", "not configured")
    partly = checks.check_meta(make_settings(meta_access_token="meta-access-token"))
    assert partly.status == WARN
    assert partly.detail == "partly configured, so off: set META_APP_SECRET, META_VERIFY_TOKEN, META_PHONE_NUMBER_ID"


# ----- PostgreSQL ---------------------------------------------------------------------------------------------


def test_postgresql_up_with_migrations_pending_then_applied(postgres_url: str) -> None:
    pending = checks.check_postgresql(make_settings(database_url=postgres_url))
    count = len(migrations())
    assert pending.status == OK
    assert pending.detail.endswith(
        f"{count} migration{'s' if count > 1 else ''} pending (applied at start, or run python -m archive upgrade)"
    )
    store = ArchiveStore(postgres_url)
    try:
        store.migrate()
    finally:
        store.close()
    applied = checks.check_postgresql(make_settings(database_url=postgres_url))
    assert applied.status == OK and "(PostgreSQL " in applied.detail
    assert applied.detail.endswith("; schema up to date")


def test_postgresql_down() -> None:
    port = free_port()
    result = checks.check_postgresql(make_settings(database_url=f"postgresql://app:pg-password@127.0.0.1:{port}/app"))
    assert result == Result(
        FAIL, "postgresql", f"DATABASE_URL: connection refused at 127.0.0.1:{port}; is PostgreSQL running?"
    )


def test_postgresql_without_the_database(postgres_url: str) -> None:
    result = checks.check_postgresql(make_settings(database_url=postgres_url.rsplit("/", 1)[0] + "/nope"))
    assert result == Result(
        FAIL, "postgresql", 'DATABASE_URL: database "nope" does not exist: create it or fix DATABASE_URL'
    )


# ----- the knowledge folder -----------------------------------------------------------------------------------


def test_knowledge_folder_ok_with_problems_or_missing(tmp_path: Path) -> None:
    (tmp_path / "bolos.md").write_text("# Bolos\n\nBolo de cenoura: R$ 30.", encoding="utf-8")
    (tmp_path / "horario.txt").write_text("Abrimos às 9h.", encoding="utf-8")
    assert checks.check_knowledge(make_settings(knowledge_dir=str(tmp_path))) == Result(
        OK, "knowledge", f"KNOWLEDGE_DIR {tmp_path}: 2 files, 0 problems"
    )
    (tmp_path / "latin1.txt").write_bytes("promoção".encode("latin-1"))
    with_problem = checks.check_knowledge(make_settings(knowledge_dir=str(tmp_path)))
    assert with_problem.status == WARN and "3 files, 1 problem: latin1.txt: not valid UTF-8" in with_problem.detail
    missing = checks.check_knowledge(make_settings(knowledge_dir=str(tmp_path / "nope")))
    assert missing.status == FAIL and missing.detail.endswith("is not a folder: create it or fix the path")
    assert checks.check_knowledge(make_settings()).status == SKIP


# ----- the report: secrets and exit codes ---------------------------------------------------------------------


def test_secrets_never_in_the_report(fake_gemini: FakeGemini, capsys: pytest.CaptureFixture[str]) -> None:
    fake_gemini.queue(Canned(400, gemini_error(400, "INVALID_ARGUMENT")))
    secrets = {
        "gemini_api_key": "gemini-secret-key",
        "authentication_api_key": "evolution-secret-key",
        "meta_access_token": "meta-secret-token",
        "meta_app_secret": "meta-app-secret",
        "twilio_auth_token": "twilio-secret-token",
        "mega_api_token": "mega-secret-token",
        "openai_api_key": "sk-openai-secret",
        "admin_token": "admin-secret-token",
    }
    settings = make_settings(
        **secrets,
        gemini_base_url=fake_gemini.url,
        ai_fallback_provider="openai",
        openai_base_url=closed_url() + "/v1",
        redis_uri=f"redis://:redis-password@127.0.0.1:{free_port()}/0",
        database_url=f"postgresql://app:pg-password@127.0.0.1:{free_port()}/app",
        evolution_api=closed_url(),
        meta_verify_token="verify",
        meta_phone_number_id="123",
        meta_graph_url=closed_url(),
        mega_api_base_url=closed_url(),
        mega_instance_id="inst",
        twilio_account_sid="AC1",
        twilio_whatsapp_from="whatsapp:+55",
        twilio_public_url="https://bot.example.com",
        twilio_api_url=closed_url(),
    )
    code, output = report(checks.run_checks(settings), capsys)
    assert code == 1
    for secret in [*secrets.values(), "redis-password", "pg-password"]:
        assert secret not in output
    assert "redis://:***@127.0.0.1" in line_of("redis", output)
    assert line_of("gemini", output).startswith("FAIL  gemini          GEMINI_API_KEY rejected (400 INVALID_ARGUMENT)")
    assert line_of("openai", output).startswith("warn  openai")  # the fallback: not required


def test_exit_code_is_zero_with_only_ok_warn_and_skip(capsys: pytest.CaptureFixture[str]) -> None:
    results = [Result(OK, "settings", "x"), Result(WARN, "knowledge", "y"), Result(SKIP, "meta", "z")]
    code, output = report(results, capsys)
    assert code == 0
    assert output.splitlines() == ["ok    settings        x", "warn  knowledge       y", "skip  meta            z"]
    code, output = report([*results, Result(FAIL, "redis", "down")], capsys)
    assert code == 1 and output.endswith("\n1 required check failed: redis\n")


# ----- the real command ---------------------------------------------------------------------------------------


def run_check_command(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python webhook.py --check` in a folder without a .env, with only `env` set."""
    return subprocess.run(
        [sys.executable, str(ROOT / "webhook.py"), "--check"],
        cwd=cwd,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_python_webhook_check(redis_server: RedisServer, fake_gemini: FakeGemini, tmp_path: Path) -> None:
    fake_gemini.queue(Canned(body=GEMINI_MODEL), Canned(403, gemini_error(403, "PERMISSION_DENIED")))
    env = {
        "CACHE_REDIS_URI": redis_server.url,
        "GEMINI_API_KEY": "subprocess-gemini-key",
        "GEMINI_BASE_URL": fake_gemini.url,
    }
    passed = run_check_command(env, tmp_path)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    lines = passed.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["ok", "settings"],
        ["ok", "redis"],
        ["ok", "gemini"],
        ["skip", "openai"],
        ["skip", "evolution"],
        ["skip", "meta"],
        ["skip", "mega"],
        ["skip", "twilio"],
        ["skip", "postgresql"],
        ["skip", "knowledge"],
    ]
    assert lines[0] == "ok    settings        no .env file found: settings come from the environment"
    assert lines[1].startswith(f"ok    redis           {redis_server.url} answers (Redis ")

    failed = run_check_command({**env, "KNOWLEDGE_DIR": str(tmp_path / "missing")}, tmp_path)
    assert failed.returncode == 1
    assert "FAIL  gemini          GEMINI_API_KEY rejected (403 PERMISSION_DENIED)" in failed.stdout
    assert "FAIL  knowledge" in failed.stdout
    assert failed.stdout.endswith("2 required checks failed: gemini, knowledge\n")
    assert "subprocess-gemini-key" not in failed.stdout + failed.stderr

    invalid = run_check_command({**env, "CACHE_REDIS_URI": "not-a-url"}, tmp_path)
    assert invalid.returncode == 2 and "configuration error" in invalid.stderr
