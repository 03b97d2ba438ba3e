"""config.py: defaults, conversions, the owner's variable names, one error listing every invalid variable,
SYSTEM_PROMPT_FILE, secrets kept out of repr, and .env.example / README.md kept in sync with ENV_VARIABLES.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import config
from config import (
    DEFAULT_FALLBACK_REPLY,
    DEFAULT_SYSTEM_PROMPT,
    ENV_ALIASES,
    ENV_VARIABLES,
    KNOWN_NAMES,
    METRICS_DIR,
    SYSTEM_PROMPT_FILE,
    Settings,
    load_settings,
    missing_for_production,
)
from errors import ConfigError
from redis_link import parse_sentinels

ROOT = Path(__file__).resolve().parent.parent
ENV_EXAMPLE = ROOT / ".env.example"
README = ROOT / "README.md"

# `NAME=value` or `# NAME=value` at the start of a line.
_ENV_LINE = re.compile(r"^(?:#\s*)?([A-Z][A-Z0-9_]*)=", re.MULTILINE)


def config_names() -> set[str]:
    return set(ENV_VARIABLES) | {SYSTEM_PROMPT_FILE, METRICS_DIR} | set(ENV_ALIASES)


# --- defaults ---------------------------------------------------------------------------------------------


def test_empty_environment_gives_the_dataclass_defaults() -> None:
    assert load_settings({}) == Settings()


def test_defaults() -> None:
    settings = load_settings({})
    assert (settings.host, settings.port, settings.log_level) == ("0.0.0.0", 5000, "INFO")
    assert (settings.redis_enabled, settings.redis_uri, settings.redis_prefix) == (
        True,
        "redis://localhost:6379/0",
        "wa_assistant",
    )
    assert (settings.debounce_seconds, settings.debounce_max_wait_seconds) == (120.0, 600.0)
    assert (settings.history_max_turns, settings.groups_enabled, settings.evolution_api_version) == (20, False, 2)
    assert settings.gemini_model == "gemini-3-flash-preview"
    assert settings.system_prompt == DEFAULT_SYSTEM_PROMPT
    assert settings.fallback_reply == DEFAULT_FALLBACK_REPLY
    assert (settings.gemini_api_key, settings.evolution_api, settings.authentication_api_key) == ("", "", "")
    assert not settings.gemini_configured
    assert not settings.gateway_configured


def test_pt_br_defaults_are_portuguese() -> None:
    assert "português do Brasil" in DEFAULT_SYSTEM_PROMPT
    assert DEFAULT_FALLBACK_REPLY.startswith("Desculpe")


def test_load_settings_reads_only_the_mapping_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "8123")
    monkeypatch.setenv("GEMINI_API_KEY", "from-os-environ")
    settings = load_settings({})
    assert (settings.port, settings.gemini_api_key) == (5000, "")


def test_load_settings_without_mapping_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "8123")
    monkeypatch.setenv("CACHE_REDIS_PREFIX_KEY", "loja_env")
    settings = load_settings(dotenv=False)
    assert (settings.port, settings.redis_prefix) == (8123, "loja_env")


@pytest.mark.parametrize("name", ["PORT", "DEBOUNCE_SECONDS", "CACHE_REDIS_ENABLED", "GEMINI_MODEL", "LOG_LEVEL"])
def test_blank_value_keeps_the_default(name: str) -> None:
    attr = ENV_VARIABLES[name][0]
    assert getattr(load_settings({name: "   "}), attr) == getattr(Settings(), attr)


# --- the owner's names ------------------------------------------------------------------------------------


def test_owner_names_map_to_settings() -> None:
    settings = load_settings(
        {
            "AUTHENTICATION_API_KEY": "chave-evolution-123",
            "EVOLUTION_API": "http://localhost:8080/message/sendText/loja-centro",
            "CACHE_REDIS_ENABLED": "false",
            "CACHE_REDIS_URI": "redis://cache.interno:6380/3",
            "CACHE_REDIS_PREFIX_KEY": "loja_centro",
            "GEMINI_API_KEY": "chave-gemini-456",
            "GEMINI_MODEL": "gemini-2.5-flash",
        }
    )
    assert settings.authentication_api_key == "chave-evolution-123"
    assert settings.evolution_api == "http://localhost:8080/message/sendText/loja-centro"
    assert settings.redis_enabled is False
    assert settings.redis_uri == "redis://cache.interno:6380/3"
    assert settings.redis_prefix == "loja_centro"
    assert settings.gemini_api_key == "chave-gemini-456"
    assert settings.gemini_model == "gemini-2.5-flash"
    assert settings.gemini_configured
    assert settings.gateway_configured


def test_every_env_variable_names_a_settings_field() -> None:
    field_names = {f.name for f in dataclasses.fields(Settings)}
    assert {attr for attr, _ in ENV_VARIABLES.values()} <= field_names


def test_no_two_env_variables_share_a_field() -> None:
    attrs = [attr for attr, _ in ENV_VARIABLES.values()]
    assert len(attrs) == len(set(attrs))


# --- conversions ------------------------------------------------------------------------------------------


def test_types_are_converted() -> None:
    settings = load_settings(
        {
            "PORT": "8080",
            "MAX_BODY_BYTES": "2048",
            "DEBOUNCE_SECONDS": "0",
            "DEBOUNCE_MAX_WAIT_SECONDS": "90.5",
            "SEND_DELAY_MS": "1200",
            "SEND_MAX_RETRIES": "0",
            "HISTORY_MAX_TURNS": "0",
            "WORKER_POLL_SECONDS": "0.05",
            "GROUPS_ENABLED": "yes",
            "WORKER_ENABLED": "0",
            "LOG_LEVEL": "debug",
            "EVOLUTION_API_VERSION": "v1",
            "HOST": "  127.0.0.1  ",
        }
    )
    assert (settings.port, type(settings.port)) == (8080, int)
    assert settings.max_body_bytes == 2048
    assert (settings.debounce_seconds, type(settings.debounce_seconds)) == (0.0, float)
    assert settings.debounce_max_wait_seconds == 90.5
    assert (settings.send_delay_ms, settings.send_max_retries, settings.history_max_turns) == (1200, 0, 0)
    assert settings.worker_poll_seconds == 0.05
    assert settings.groups_enabled is True
    assert settings.worker_enabled is False
    assert settings.log_level == "DEBUG"
    assert settings.evolution_api_version == 1
    assert settings.host == "127.0.0.1"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("true", True), ("TRUE", True), ("on", True), (" Yes ", True)]
    + [("0", False), ("false", False), ("False", False), ("off", False), ("no", False)],
)
def test_booleans(raw: str, expected: bool) -> None:
    assert load_settings({"CACHE_REDIS_ENABLED": raw}).redis_enabled is expected


@pytest.mark.parametrize(("raw", "expected"), [("2", 2), ("v2", 2), ("V1", 1), (" 1 ", 1)])
def test_evolution_api_version(raw: str, expected: int) -> None:
    assert load_settings({"EVOLUTION_API_VERSION": raw}).evolution_api_version == expected


def test_secrets_and_urls_are_stripped() -> None:
    settings = load_settings({"GEMINI_API_KEY": " chave \n", "EVOLUTION_API": " http://evo:8080/ "})
    assert (settings.gemini_api_key, settings.evolution_api) == ("chave", "http://evo:8080/")


def test_system_prompt_from_environment() -> None:
    assert load_settings({"SYSTEM_PROMPT": "Você atende a Padaria Pão Quente."}).system_prompt == (
        "Você atende a Padaria Pão Quente."
    )


def test_knowledge_variables() -> None:
    settings = load_settings(
        {
            "BUSINESS_NAME": " Doceria Flor de Canela ",
            "KNOWLEDGE_DIR": "/srv/conhecimento",
            "RAG_TOP_K": "6",
            "RAG_WHOLE_MAX_CHARS": "0",
            "RAG_AUTO_RELOAD": "false",
            "RAG_WATCH_INTERVAL": "0.5",
            "ADMIN_TOKEN": " segredo-admin ",
        }
    )
    assert settings.business_name == "Doceria Flor de Canela"
    assert (settings.knowledge_dir, settings.rag_top_k, settings.rag_whole_max_chars) == ("/srv/conhecimento", 6, 0)
    assert (settings.rag_auto_reload, settings.rag_watch_interval) == (False, 0.5)
    assert settings.admin_token == "segredo-admin"
    assert "segredo-admin" not in repr(settings)


def test_knowledge_defaults() -> None:
    settings = load_settings({})
    assert (settings.knowledge_dir, settings.business_name, settings.admin_token) == ("", "", "")
    assert (settings.rag_top_k, settings.rag_whole_max_chars) == (4, 30_000)
    assert (settings.rag_auto_reload, settings.rag_watch_interval) == (True, 5.0)


def test_rag_dir_is_an_alias_of_knowledge_dir() -> None:
    assert load_settings({"RAG_DIR": " ./conhecimento "}).knowledge_dir == "./conhecimento"
    same = load_settings({"RAG_DIR": "./conhecimento", "KNOWLEDGE_DIR": "./conhecimento"})
    assert same.knowledge_dir == "./conhecimento"
    assert load_settings({"RAG_DIR": "  ", "KNOWLEDGE_DIR": "./base"}).knowledge_dir == "./base"


def test_rag_dir_and_knowledge_dir_that_disagree_are_reported() -> None:
    with pytest.raises(ConfigError, match="RAG_DIR: .*KNOWLEDGE_DIR"):
        load_settings({"RAG_DIR": "./a", "KNOWLEDGE_DIR": "./b"})


def test_missing_knowledge_dir_is_a_start_up_warning(tmp_path: Path) -> None:
    missing = config.missing_for_production(load_settings({"KNOWLEDGE_DIR": str(tmp_path / "nao-existe")}))
    assert any("KNOWLEDGE_DIR" in line for line in missing)
    present = config.missing_for_production(load_settings({"KNOWLEDGE_DIR": str(tmp_path)}))
    assert not any("KNOWLEDGE_DIR" in line for line in present)


# --- invalid values ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("PORT", "cinco mil"),
        ("PORT", "0"),
        ("PORT", "-1"),
        ("PORT", "80.5"),
        ("MAX_BODY_BYTES", "0"),
        ("MAX_MESSAGE_CHARS", "-10"),
        ("DEBOUNCE_SECONDS", "-1"),
        ("DEBOUNCE_SECONDS", "dois minutos"),
        ("DEBOUNCE_SECONDS", "nan"),
        ("SEND_TIMEOUT_SECONDS", "0"),
        ("SEND_TIMEOUT_SECONDS", "inf"),
        ("GEMINI_TIMEOUT_SECONDS", "nan"),
        ("SEND_DELAY_MS", "-5"),
        ("SEND_MAX_RETRIES", "-1"),
        ("HISTORY_MAX_TURNS", "-1"),
        ("CACHE_REDIS_ENABLED", "talvez"),
        ("GROUPS_ENABLED", "sim"),
        ("WORKER_ENABLED", "2"),
        ("LOG_LEVEL", "VERBOSE"),
        ("EVOLUTION_API_VERSION", "3"),
        ("EVOLUTION_API_VERSION", "2.3"),
        ("LEASE_SECONDS", "0"),
        ("WORKER_CONCURRENCY", "0"),
        ("RAG_TOP_K", "0"),
        ("RAG_TOP_K", "tres"),
        ("RAG_WHOLE_MAX_CHARS", "-1"),
        ("RAG_AUTO_RELOAD", "sempre"),
        ("RAG_WATCH_INTERVAL", "0"),
        ("RAG_WATCH_INTERVAL", "nan"),
        ("HANDOFF_PAUSE_MINUTES", "-1"),
        ("HANDOFF_PAUSE_MINUTES", "duas horas"),
        ("BOT_RESUME_KEYWORD", "volta bot"),
        ("HANDOFF_KEYWORDS", " , ,"),
        ("BUSINESS_HOURS", "seg-sex 08:00-18:00"),
        ("BUSINESS_HOURS", "mon-fri 18:00-08:00"),
        ("BUSINESS_HOURS", "mon-fri 08:00-25:00"),
        ("TIMEZONE", "America/Sao Paulo"),
        ("HOLIDAYS", "2026-13-01"),
        ("HOLIDAYS", "25/12/2026"),
        ("BOT_HOURS", "sometimes"),
        ("BOT_HOURS", "outside"),  # without BUSINESS_HOURS the bot would never answer
        ("CONVERSATION_IDLE_MINUTES", "0"),
        ("SPLIT_MESSAGES", "talvez"),
        ("SPLIT_MAX_PARTS", "0"),
        ("TYPING_MS_PER_CHAR", "-1"),
        ("CACHE_REDIS_URI", "localhost:6379"),  # no scheme: was a 24-line traceback at start
        ("CACHE_REDIS_URI", "http://localhost:6379"),
        ("CACHE_REDIS_URI", "redis://localhost:99999/0"),
        ("EVOLUTION_API", "evolution:8080"),
        ("GEMINI_BASE_URL", "localhost:8000"),
        ("HANDOFF_NOTIFY_URL", "ftp://owner.example.com/x"),
        ("TWILIO_PUBLIC_URL", "bot.example.com"),
        ("REPLY_MAX_AGE_MINUTES", "0"),
    ],
)
def test_invalid_value_raises_config_error_naming_the_variable(name: str, raw: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_settings({name: raw})
    assert f"{name}:" in str(excinfo.value)


def test_conversation_control_variables() -> None:
    settings = load_settings(
        {
            "HANDOFF_PAUSE_MINUTES": "0.1",
            "BOT_PAUSE_KEYWORD": "#pessoa",
            "HANDOFF_KEYWORDS": "gerente, falar com o dono ,gerente",
            "OPT_OUT_REPLY": "   ",
            "BUSINESS_HOURS": "mon-fri 08:00-18:00; sat 08:00-12:00",
            "TIMEZONE": "America/Manaus",
            "HOLIDAYS": "2026-12-25",
            "BOT_HOURS": "Business",
            "SPLIT_MESSAGES": "true",
        }
    )
    assert settings.handoff_pause_seconds == pytest.approx(6.0)
    assert (settings.bot_pause_keyword, settings.handoff_keywords) == ("#pessoa", ("gerente", "falar com o dono"))
    assert settings.opt_out_reply == ""  # set empty: send nothing
    assert (settings.bot_hours, settings.split_messages) == ("business", True)
    assert str(settings.hours.timezone) == "America/Manaus" and not settings.hours.always_open
    assert load_settings({}).hours.always_open


def test_a_bad_business_hours_value_names_the_bad_piece() -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_settings({"BUSINESS_HOURS": "mon-fri 08:00-12:00; sab 08:00-12:00"})
    assert "BUSINESS_HOURS: unknown day 'sab'" in str(excinfo.value)


def test_config_error_lists_every_invalid_variable_at_once() -> None:
    environ = {
        "PORT": "abc",
        "DEBOUNCE_SECONDS": "-3",
        "CACHE_REDIS_ENABLED": "talvez",
        "LOG_LEVEL": "LOUD",
        "EVOLUTION_API_VERSION": "9",
        "WORKER_CONCURRENCY": "0",
        "GEMINI_MODEL": "gemini-2.5-flash",  # valid: must not be listed
        SYSTEM_PROMPT_FILE: "/caminho/que/nao/existe/prompt.txt",
    }
    with pytest.raises(ConfigError) as excinfo:
        load_settings(environ)
    message = str(excinfo.value)
    listed = set(re.findall(r"^\s+([A-Z][A-Z0-9_]*):", message, re.MULTILINE))
    assert listed == set(environ) - {"GEMINI_MODEL"}


# --- SYSTEM_PROMPT_FILE -----------------------------------------------------------------------------------


def test_system_prompt_file_replaces_system_prompt(tmp_path: Path) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("\nVocê é o atendente da Loja Centro.\nSeja breve.\n\n", encoding="utf-8")
    settings = load_settings({"SYSTEM_PROMPT": "ignorado", SYSTEM_PROMPT_FILE: str(prompt)})
    assert settings.system_prompt == "Você é o atendente da Loja Centro.\nSeja breve."


def test_blank_system_prompt_file_is_not_read() -> None:
    assert load_settings({SYSTEM_PROMPT_FILE: "  "}).system_prompt == DEFAULT_SYSTEM_PROMPT


def test_missing_system_prompt_file_is_reported(tmp_path: Path) -> None:
    missing = tmp_path / "nao-existe.txt"
    with pytest.raises(ConfigError) as excinfo:
        load_settings({SYSTEM_PROMPT_FILE: str(missing)})
    message = str(excinfo.value)
    assert f"{SYSTEM_PROMPT_FILE}:" in message
    assert "nao-existe.txt" in message


def test_directory_as_system_prompt_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=SYSTEM_PROMPT_FILE):
        load_settings({SYSTEM_PROMPT_FILE: str(tmp_path)})


def test_non_utf8_system_prompt_file_is_reported(tmp_path: Path) -> None:
    prompt = tmp_path / "latin1.txt"
    prompt.write_bytes("Você é o atendente".encode("latin-1"))
    with pytest.raises(ConfigError, match=SYSTEM_PROMPT_FILE):
        load_settings({SYSTEM_PROMPT_FILE: str(prompt)})


# --- FALLBACK_REPLY ---------------------------------------------------------------------------------------


def test_fallback_reply_unset_is_the_pt_br_default() -> None:
    assert load_settings({}).fallback_reply == DEFAULT_FALLBACK_REPLY


@pytest.mark.parametrize("raw", ["", "   "])
def test_fallback_reply_set_empty_disables_it(raw: str) -> None:
    assert load_settings({"FALLBACK_REPLY": raw}).fallback_reply == ""


def test_fallback_reply_custom_is_stripped() -> None:
    assert load_settings({"FALLBACK_REPLY": "  Já volto!  "}).fallback_reply == "Já volto!"


# --- secrets ----------------------------------------------------------------------------------------------


def test_secrets_absent_from_repr() -> None:
    secrets = {
        "GEMINI_API_KEY": "segredo-gemini-AIzaFAKE",
        "AUTHENTICATION_API_KEY": "segredo-evolution-FAKE",
        "WEBHOOK_TOKEN": "segredo-token-FAKE",
        "WEBHOOK_JWT_SECRET": "segredo-jwt-FAKE",
    }
    settings = load_settings({**secrets, "GEMINI_MODEL": "modelo-visivel"})
    text = repr(settings)
    assert "modelo-visivel" in text  # repr does show ordinary settings...
    for value in secrets.values():
        assert value not in text  # ...but never a secret
    assert str(settings) == text


# --- .env.example and README.md stay in sync with config --------------------------------------------


def test_env_example_documents_every_variable() -> None:
    documented = set(_ENV_LINE.findall(ENV_EXAMPLE.read_text(encoding="utf-8")))
    assert config_names() - documented == set()


def test_env_example_names_only_known_variables() -> None:
    documented = set(_ENV_LINE.findall(ENV_EXAMPLE.read_text(encoding="utf-8")))
    assert documented - config_names() == set()


def test_env_example_loads_cleanly_and_matches_the_defaults() -> None:
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            values[match.group(1)] = match.group(2)
    assert load_settings(values) == Settings()


def test_readme_mentions_every_variable() -> None:
    if not README.exists():
        pytest.skip("README.md does not exist yet")
    text = README.read_text(encoding="utf-8")
    missing = sorted(name for name in config_names() if not re.search(rf"\b{name}\b", text))
    assert missing == []


def test_config_module_is_the_only_reader_of_the_environment() -> None:
    offenders = []
    for path in sorted(ROOT.glob("*.py")) + sorted((ROOT / "gateways").glob("*.py")):
        if path.name == "config.py":
            continue
        source = path.read_text(encoding="utf-8")
        if re.search(r"os\.environ|os\.getenv|getenv\(", source):
            offenders.append(path.name)
    assert offenders == []
    assert "os.environ" in Path(config.__file__).read_text(encoding="utf-8")


# --- .env at start-up ---------------------------------------------------------------------------------------


@pytest.fixture
def clean_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty working directory, with none of our variables in the environment (load_dotenv writes there)."""
    monkeypatch.chdir(tmp_path)
    before = dict(os.environ)
    for name in KNOWN_NAMES:
        monkeypatch.delenv(name, raising=False)
    yield tmp_path
    for name in set(os.environ) - set(before):
        del os.environ[name]


def test_names_in_dotenv_that_look_like_ours_are_reported(clean_cwd: Path) -> None:
    (clean_cwd / ".env").write_text(
        "DEBOUNCE_SECOND=5\nGEMINI_MODELO=gemini-x\nCACHE_REDIS_URL=redis://x\nMY_BACKUP_DIR=/srv\nDEBOUNCE_SECONDS=3\n"
    )
    settings = load_settings()
    assert settings.debounce_seconds == 3.0
    notes = missing_for_production(settings)
    path = str(clean_cwd / ".env")
    assert f"DEBOUNCE_SECOND in {path} is not a setting of this service: did you mean DEBOUNCE_SECONDS?" in notes
    assert f"GEMINI_MODELO in {path} is not a setting of this service: did you mean GEMINI_MODEL?" in notes
    assert f"CACHE_REDIS_URL in {path} is not a setting of this service: did you mean CACHE_REDIS_URI?" in notes
    assert not any("MY_BACKUP_DIR" in note for note in notes)  # not ours: none of our business


def test_a_missing_dotenv_is_said_at_start(clean_cwd: Path) -> None:
    notes = missing_for_production(load_settings())
    assert any(note.startswith("no .env file found") and str(clean_cwd) in note for note in notes), notes


def test_a_first_run_is_pointed_at_the_simulator_and_dry_run_is_said(clean_cwd: Path) -> None:
    first_run = missing_for_production(load_settings())
    assert "no gateway is configured: try the assistant in the WhatsApp simulator at /simulator" in first_run
    assert any(note.startswith("GEMINI_API_KEY is not set") for note in first_run)

    dry = missing_for_production(load_settings({"AI_DRY_RUN": "true", "SIMULATOR_ENABLED": "false"}))
    assert any(note.startswith("AI_DRY_RUN=true") for note in dry)
    assert not any(note.startswith("GEMINI_API_KEY") or "simulator" in note for note in dry)


def test_scale_out_variables() -> None:
    settings = load_settings(
        {
            "CACHE_REDIS_SENTINELS": " sentinel-a:26379, 10.0.0.7:26380 ",
            "CACHE_REDIS_SENTINEL_MASTER": "cache",
            "OUTBOUND_RATE_PER_SECOND_EVOLUTION": "0.5",
            "OUTBOUND_RATE_PER_SECOND_META": "0",
            "OUTBOUND_CUSTOMER_GAP_SECONDS": "2",
        }
    )
    assert parse_sentinels(settings.redis_sentinels) == (("sentinel-a", 26379), ("10.0.0.7", 26380))
    assert settings.redis_sentinel_master == "cache"
    assert (settings.outbound_rate_evolution, settings.outbound_rate_meta) == (0.5, 0.0)
    assert (settings.outbound_rate_twilio, settings.outbound_rate_mega) == (10.0, 2.0)  # the defaults
    assert settings.outbound_customer_gap_seconds == 2.0
    for bad in ({"CACHE_REDIS_SENTINELS": "sentinel-a"}, {"OUTBOUND_RATE_PER_SECOND_TWILIO": "-1"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            load_settings(bad)


def test_cluster_variables() -> None:
    assert (load_settings({}).redis_cluster, load_settings({}).due_shards) == (False, 16)
    settings = load_settings(
        {"CACHE_REDIS_CLUSTER": "true", "CACHE_REDIS_URI": "redis://node-a:7000", "DUE_SHARDS": "32"}
    )
    assert (settings.redis_cluster, settings.due_shards) == (True, 32)
    refused = {
        "CACHE_REDIS_SENTINELS": {"CACHE_REDIS_SENTINELS": "sentinel-a:26379"},
        "has only database 0": {"CACHE_REDIS_URI": "redis://node-a:7000/2"},
        "DUE_SHARDS": {"DUE_SHARDS": "0"},
    }
    for reason, extra in refused.items():
        with pytest.raises(ConfigError, match=reason):
            load_settings({"CACHE_REDIS_CLUSTER": "true", **extra})
    assert load_settings({"CACHE_REDIS_URI": "redis://cache:6379/2"}).redis_uri.endswith("/2")  # fine on one server
