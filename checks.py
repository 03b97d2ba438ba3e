"""`python webhook.py --check`: try each configured dependency once, with a short timeout, and say what to fix.

Owns one small check per dependency (settings, Redis, Gemini, OpenAI, the gateways, PostgreSQL, the knowledge
folder), each returning a `Result`, and the report. It changes nothing anywhere (no migration, no message sent) and
never prints a secret: URLs are redacted and every secret of the settings is masked in the report.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpx2
import openai
import psycopg
import redis
import requests
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from archive.store import migrations
from config import Settings
from gateways.evolution import evolution_server_url
from knowledge import KNOWLEDGE_SUFFIXES, KnowledgeBase
from openai_provider import NO_KEY
from redis_link import RedisLink

TIMEOUT_SECONDS = 5.0  # per HTTP call (Gemini, OpenAI, the gateways)
CONNECT_TIMEOUT_SECONDS = 3  # Redis and PostgreSQL
GEMINI_DEFAULT_URL = "https://generativelanguage.googleapis.com"
OPENAI_DEFAULT_URL = "https://api.openai.com/v1"

OK, FAIL, WARN, SKIP = "ok", "FAIL", "warn", "skip"


@dataclass(frozen=True, slots=True)
class Result:
    """One line of the report. FAIL means a required dependency does not work; warn is a problem that does not
    stop the service; skip is a dependency that is not configured."""

    status: str
    name: str
    detail: str


# ----- settings and Redis -------------------------------------------------------------------------------------


def check_settings(settings: Settings) -> Result:
    if not settings.env_file:
        return Result(OK, "settings", "no .env file found: settings come from the environment")
    if settings.startup_notes:  # names in .env that look like ours but are not (typos)
        return Result(WARN, "settings", f".env read from {settings.env_file}; " + "; ".join(settings.startup_notes))
    return Result(OK, "settings", f".env read from {settings.env_file}")


def check_redis(settings: Settings) -> Result:
    if not settings.redis_enabled:
        return Result(SKIP, "redis", "CACHE_REDIS_ENABLED=false: in-process buffer (one process only)")
    link = RedisLink.for_settings(settings, timeout_seconds=CONNECT_TIMEOUT_SECONDS)  # the service's own client
    client, where = link.client, link.where
    assert client is not None  # CACHE_REDIS_ENABLED is true here
    try:
        client.ping()
        version = client.info("server").get("redis_version", "?")
    except redis.AuthenticationError:
        return Result(FAIL, "redis", f"CACHE_REDIS_URI {where}: password rejected; check the password in the URI")
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        return Result(
            FAIL,
            "redis",
            f"CACHE_REDIS_URI {where}: {network_problem(exc)}; is Redis running? "
            "(or CACHE_REDIS_ENABLED=false to run one process without it)",
        )
    except redis.RedisError as exc:
        return Result(FAIL, "redis", f"CACHE_REDIS_URI {where}: {exc.__class__.__name__}: {exc}")
    finally:
        client.close()
    return Result(OK, "redis", f"{where} answers (Redis {version})")


# ----- models -------------------------------------------------------------------------------------------------

KEY_NAMES = {"gemini": "GEMINI_API_KEY", "openai": "OPENAI_API_KEY (or OPENAI_BASE_URL)"}


def check_gemini(settings: Settings) -> Result:
    return _check_model(settings, "gemini", _ask_gemini)


def check_openai(settings: Settings) -> Result:
    return _check_model(settings, "openai", _ask_openai)


def _check_model(settings: Settings, name: str, ask: Callable[[Settings], tuple[bool, str]]) -> Result:
    """A provider in the chain (AI_PROVIDER, then AI_FALLBACK_PROVIDER) is asked for its model. It is required when
    it is the first configured one of the chain, unless AI_DRY_RUN; a failing provider that is not required is a
    warning."""
    primary, fallback = settings.ai_provider, settings.ai_fallback_provider
    chain = [primary] + ([fallback] if fallback and fallback != primary else [])
    if name not in chain:
        uses = f"AI_PROVIDER={primary}, " + (
            f"AI_FALLBACK_PROVIDER={fallback}" if fallback else "no AI_FALLBACK_PROVIDER"
        )
        return Result(SKIP, name, f"not used ({uses})")
    configured = [n for n in chain if settings.provider_configured(n)]
    if not settings.provider_configured(name):
        if settings.ai_dry_run:
            return Result(SKIP, name, f"AI_DRY_RUN=true: no model is called ({KEY_NAMES[name]} not set)")
        if not configured and name == primary:
            return Result(
                FAIL,
                name,
                f"no model configured: set {KEY_NAMES[name]} (AI_PROVIDER={primary}), or AI_DRY_RUN=true to try the "
                "assistant without a model",
            )
        if name == primary:
            return Result(WARN, name, f"{KEY_NAMES[name]} is not set: every burst goes to the fallback {fallback}")
        return Result(WARN, name, f"AI_FALLBACK_PROVIDER={name} but {KEY_NAMES[name]} is not set: no fallback model")
    answers, detail = ask(settings)
    if answers:
        return Result(OK, name, detail)
    required = not settings.ai_dry_run and name == configured[0]
    if required:
        return Result(FAIL, name, detail)
    return Result(WARN, name, f"{detail} (not required: {'AI_DRY_RUN=true' if settings.ai_dry_run else 'fallback'})")


def _ask_gemini(settings: Settings) -> tuple[bool, str]:
    """models.get of GEMINI_MODEL: free, and it needs a valid key and an existing model."""
    where = settings.gemini_base_url or GEMINI_DEFAULT_URL
    http_options = types.HttpOptions(
        base_url=settings.gemini_base_url or None,
        timeout=int(TIMEOUT_SECONDS * 1000),
        retry_options=types.HttpRetryOptions(attempts=1),
    )
    client = genai.Client(api_key=settings.gemini_api_key, http_options=http_options)
    try:
        client.models.get(model=settings.gemini_model)
    except genai_errors.APIError as exc:
        answered = f"{exc.code} {exc.status or ''}".strip()
        if exc.code in (400, 401, 403):
            return False, f"GEMINI_API_KEY rejected ({answered}): check the key in Google AI Studio"
        if exc.code == 404:
            return False, f"model {settings.gemini_model!r} not found ({answered}): check GEMINI_MODEL"
        if exc.code == 429:
            return False, f"{where} answered {answered}: quota or rate limit reached; check the plan in AI Studio"
        return False, f"{where} answered {answered}: try again later"
    except httpx2.HTTPError as exc:
        return False, f"{where} unreachable ({network_problem(exc)}): check the network or GEMINI_BASE_URL"
    except ValueError as exc:  # a body the SDK cannot read: not Gemini
        return False, f"{where} answered something that is not Gemini ({exc.__class__.__name__}): GEMINI_BASE_URL?"
    finally:
        client.close()
    return True, f"{where} answers; model {settings.gemini_model} found"


def _ask_openai(settings: Settings) -> tuple[bool, str]:
    """models.retrieve of OPENAI_MODEL: free, and it needs a valid key and an existing model."""
    where = settings.openai_base_url or OPENAI_DEFAULT_URL
    client = openai.OpenAI(
        api_key=settings.openai_api_key or NO_KEY,
        base_url=settings.openai_base_url or None,
        max_retries=0,
        timeout=TIMEOUT_SECONDS,
    )
    try:
        client.models.retrieve(settings.openai_model)
    except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
        return False, f"OPENAI_API_KEY rejected ({exc.status_code}): check the key (platform.openai.com/api-keys)"
    except openai.NotFoundError as exc:
        return False, f"model {settings.openai_model!r} not found ({exc.status_code}): check OPENAI_MODEL"
    except openai.APIStatusError as exc:
        return False, f"{where} answered {exc.status_code}: try again later"
    except openai.APIConnectionError as exc:  # timeouts included
        return False, f"{where} unreachable ({network_problem(exc)}): check the network or OPENAI_BASE_URL"
    finally:
        client.close()
    return True, f"{where} answers; model {settings.openai_model} found"


# ----- gateways -----------------------------------------------------------------------------------------------


def check_evolution(settings: Settings) -> Result:
    """The instance's connection state when EVOLUTION_API names one (the sendText URL), else every instance's."""
    if not settings.evolution_api:
        return Result(SKIP, "evolution", "not configured (EVOLUTION_API is empty)")
    server = evolution_server_url(settings.evolution_api)
    headers = {"apikey": settings.authentication_api_key}
    path = urlsplit(settings.evolution_api).path
    if "/message/sendText/" in path:
        instance = unquote(path.split("/message/sendText/", 1)[1].strip("/"))
        url = f"{server}/instance/connectionState/{quote(instance, safe='')}"
    else:
        instance, url = "", f"{server}/instance/fetchInstances"
    not_found = f"instance {instance!r} of EVOLUTION_API" if instance else ""
    answer = _get("evolution", server, url, headers=headers, key_name="AUTHENTICATION_API_KEY", not_found=not_found)
    if isinstance(answer, Result):
        return answer
    if instance:
        state = _state(answer)
        if state != "open":
            return Result(
                FAIL, "evolution", f"{server} answers; instance {instance!r} state: {state}: connect it (QR code)"
            )
        return Result(OK, "evolution", f"{server} answers; instance {instance!r} state: {state}")
    instances = [_instance_state(item) for item in answer] if isinstance(answer, list) else []
    if not instances:
        return Result(FAIL, "evolution", f"{server} answers but has no instance: create one and connect it")
    listed = ", ".join(f"{name!r} {state}" for name, state in instances)
    if all(state != "open" for _, state in instances):
        return Result(FAIL, "evolution", f"{server} answers; no instance is open ({listed}): connect one (QR code)")
    return Result(OK, "evolution", f"{server} answers; instances: {listed}")


def check_meta(settings: Settings) -> Result:
    names = {
        "META_APP_SECRET": settings.meta_app_secret,
        "META_VERIFY_TOKEN": settings.meta_verify_token,
        "META_ACCESS_TOKEN": settings.meta_access_token,
        "META_PHONE_NUMBER_ID": settings.meta_phone_number_id,
    }
    if not settings.meta_enabled:
        return _not_configured("meta", names)
    base = f"{settings.meta_graph_url.rstrip('/')}/{settings.meta_api_version}"
    url = f"{base}/{quote(settings.meta_phone_number_id, safe='')}"
    answer = _get(
        "meta",
        base,
        url,
        headers={"Authorization": f"Bearer {settings.meta_access_token}"},
        key_name="META_ACCESS_TOKEN",
        not_found="META_PHONE_NUMBER_ID",
    )
    if isinstance(answer, Result):
        return answer
    body = answer if isinstance(answer, dict) else {}
    number = body.get("display_phone_number") or settings.meta_phone_number_id
    name = f" ({body['verified_name']})" if body.get("verified_name") else ""
    return Result(OK, "meta", f"{base} answers; phone number {number}{name}")


def check_mega(settings: Settings) -> Result:
    names = {
        "MEGA_API_BASE_URL": settings.mega_api_base_url,
        "MEGA_INSTANCE_ID": settings.mega_instance_id,
        "MEGA_API_TOKEN": settings.mega_api_token,
    }
    if not settings.mega_enabled:
        return _not_configured("mega", names)
    base = settings.mega_api_base_url.rstrip("/")
    url = f"{base}/rest/instance/{quote(settings.mega_instance_id, safe='')}"
    answer = _get(
        "mega",
        base,
        url,
        headers={"Authorization": f"Bearer {settings.mega_api_token}"},
        key_name="MEGA_API_TOKEN",
        not_found="MEGA_INSTANCE_ID",
    )
    if isinstance(answer, Result):
        return answer
    return Result(OK, "mega", f"{base} answers; instance {settings.mega_instance_id!r} state: {_state(answer)}")


def check_twilio(settings: Settings) -> Result:
    names = {
        "TWILIO_ACCOUNT_SID": settings.twilio_account_sid,
        "TWILIO_AUTH_TOKEN": settings.twilio_auth_token,
        "TWILIO_WHATSAPP_FROM": settings.twilio_whatsapp_from,
        "TWILIO_PUBLIC_URL": settings.twilio_public_url,
    }
    if not settings.twilio_enabled:
        return _not_configured("twilio", names)
    base = settings.twilio_api_url.rstrip("/")
    url = f"{base}/2010-04-01/Accounts/{quote(settings.twilio_account_sid, safe='')}.json"
    answer = _get(
        "twilio",
        base,
        url,
        auth=(settings.twilio_account_sid, settings.twilio_auth_token),
        key_name="TWILIO_ACCOUNT_SID or TWILIO_AUTH_TOKEN",
        not_found="TWILIO_ACCOUNT_SID",
    )
    if isinstance(answer, Result):
        return answer
    status = str(answer.get("status") or "?") if isinstance(answer, dict) else "?"
    if status not in ("active", "?"):
        return Result(FAIL, "twilio", f"{base} answers; account status: {status}: see the Twilio console")
    return Result(OK, "twilio", f"{base} answers; account status: {status}")


def _not_configured(name: str, names: dict[str, str]) -> Result:
    missing = [variable for variable, value in names.items() if not value]
    if len(missing) == len(names):
        return Result(SKIP, name, "not configured")
    return Result(WARN, name, f"partly configured, so off: set {', '.join(missing)}")


def _get(
    name: str,
    where: str,
    url: str,
    *,
    key_name: str,
    not_found: str = "",
    headers: dict[str, str] | None = None,
    auth: tuple[str, str] | None = None,
) -> Any:
    """GET `url` once; its JSON (None if it has none), or a FAIL Result saying what went wrong."""
    try:
        response = requests.get(url, headers=headers, auth=auth, timeout=TIMEOUT_SECONDS)
    except requests.RequestException as exc:
        return Result(FAIL, name, f"{where} unreachable ({network_problem(exc)}): is it up, and is the URL right?")
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code in (401, 403) or _graph_token_error(body):
        return Result(FAIL, name, f"{key_name} rejected ({response.status_code}): check it")
    if response.status_code == 404 and not_found:
        return Result(FAIL, name, f"{where}: {not_found} not found (404): check it")
    if response.status_code >= 400:
        return Result(FAIL, name, f"{where} answered {response.status_code}")
    return body


def _graph_token_error(body: Any) -> bool:
    """Meta's Graph API answers an invalid or expired token with 400 and an OAuthException, code 190."""
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, dict) and error.get("code") == 190


def _state(body: Any) -> str:
    """An instance's state in a gateway's answer: {"instance": {"state": ...}}, {"state": ...} or {"status": ...}."""
    if not isinstance(body, dict):
        return "?"
    instance = body.get("instance") if isinstance(body.get("instance"), dict) else {}
    return str(instance.get("state") or instance.get("status") or body.get("state") or body.get("status") or "?")


def _instance_state(item: Any) -> tuple[str, str]:
    """(name, state) of one entry of fetchInstances: v2 {"name", "connectionStatus"}, v1 {"instance": {...}}."""
    if not isinstance(item, dict):
        return "?", "?"
    inner = item.get("instance") if isinstance(item.get("instance"), dict) else item
    name = inner.get("name") or inner.get("instanceName") or "?"
    return str(name), str(inner.get("connectionStatus") or inner.get("state") or inner.get("status") or "?")


# ----- PostgreSQL and the knowledge folder --------------------------------------------------------------------


def check_postgresql(settings: Settings) -> Result:
    """Connects, reads the server's version and compares archive_migrations with the repository's migrations."""
    if not settings.database_url:
        return Result(SKIP, "postgresql", "not configured (DATABASE_URL is empty: no archive)")
    parts = urlsplit(settings.database_url)
    where = f"{parts.hostname or 'localhost'}:{parts.port or 5432}"
    try:
        with psycopg.connect(settings.database_url, connect_timeout=CONNECT_TIMEOUT_SECONDS, autocommit=True) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
            done: set[int] = set()
            if conn.execute("SELECT to_regclass('archive_migrations')").fetchone()[0] is not None:
                done = {row[0] for row in conn.execute("SELECT version FROM archive_migrations")}
    except psycopg.Error as exc:
        return Result(FAIL, "postgresql", f"DATABASE_URL: {_postgres_problem(exc, where)}")
    pending = [name for number, name, _ in migrations() if number not in done]
    if pending:
        schema = (
            f"{len(pending)} migration{'s' if len(pending) > 1 else ''} pending (applied at start, or run "
            "python -m archive upgrade)"
        )
    else:
        schema = "schema up to date"
    database = parts.path.lstrip("/") or "?"
    return Result(OK, "postgresql", f"{where}/{database} answers (PostgreSQL {version.split()[0]}); {schema}")


def _postgres_problem(exc: psycopg.Error, where: str) -> str:
    text = str(exc)
    if "password authentication failed" in text:
        return f"password rejected at {where}: check the user and password in DATABASE_URL"
    if "does not exist" in text:
        return f"{text.strip().splitlines()[-1].split('FATAL:')[-1].strip()}: create it or fix DATABASE_URL"
    problem = network_problem(exc)
    if problem != "no connection":
        return f"{problem} at {where}; is PostgreSQL running?"
    return f"{exc.__class__.__name__} at {where}: {text.strip().splitlines()[0] if text.strip() else ''}"


def check_knowledge(settings: Settings) -> Result:
    if not settings.knowledge_dir:
        return Result(SKIP, "knowledge", "not configured (KNOWLEDGE_DIR is empty: no knowledge base)")
    where = f"KNOWLEDGE_DIR {settings.knowledge_dir}"
    base = KnowledgeBase(settings.knowledge_dir, top_k=settings.rag_top_k, whole_max_chars=settings.rag_whole_max_chars)
    if base.directory is None or not base.directory.is_dir():
        return Result(FAIL, "knowledge", f"{where} is not a folder: create it or fix the path")
    snapshot = base.reload()
    files, problems = len(snapshot.files), len(snapshot.problems)
    summary = f"{where}: {files} file{'' if files == 1 else 's'}, {problems} problem{'' if problems == 1 else 's'}"
    if problems:
        return Result(WARN, "knowledge", f"{summary}: {'; '.join(snapshot.problems)}")
    if not files:
        return Result(WARN, "knowledge", f"{summary}: no {'/'.join(KNOWLEDGE_SUFFIXES)} files in it yet")
    return Result(OK, "knowledge", summary)


# ----- running and reporting ----------------------------------------------------------------------------------

CHECKS: tuple[Callable[[Settings], Result], ...] = (
    check_settings,
    check_redis,
    check_gemini,
    check_openai,
    check_evolution,
    check_meta,
    check_mega,
    check_twilio,
    check_postgresql,
    check_knowledge,
)


def run_checks(settings: Settings) -> list[Result]:
    """Every check, at the same time (so the slowest timeout bounds the wait), in the order of CHECKS; secrets of
    the settings are masked in what they say."""
    with ThreadPoolExecutor(max_workers=len(CHECKS)) as pool:
        results = list(pool.map(lambda check: _run(check, settings), CHECKS))
    secrets = _secrets(settings)
    return [Result(r.status, r.name, _mask(r.detail, secrets)) for r in results]


def _run(check: Callable[[Settings], Result], settings: Settings) -> Result:
    name = check.__name__.removeprefix("check_")
    try:
        return check(settings)
    except Exception as exc:  # a bug in a check must not hide the other lines
        return Result(FAIL, name, f"the check itself failed: {exc.__class__.__name__}")


def print_report(results: list[Result]) -> int:
    """One line per check; returns the exit status: 1 when a required dependency failed, else 0."""
    for result in results:
        print(f"{result.status:<5} {result.name:<15} {result.detail}")
    failed = [result.name for result in results if result.status == FAIL]
    if failed:
        print(f"\n{len(failed)} required check{'s' if len(failed) > 1 else ''} failed: {', '.join(failed)}")
        return 1
    return 0


def _secrets(settings: Settings) -> list[str]:
    """Every secret value of the settings (the fields kept out of repr), and the password in DATABASE_URL."""
    values = [
        getattr(settings, f.name) for f in fields(settings) if not f.repr and isinstance(getattr(settings, f.name), str)
    ]
    values += [urlsplit(url).password or "" for url in (settings.database_url, settings.redis_uri)]
    return sorted({value for value in values if len(value) >= 4}, key=len, reverse=True)


def _mask(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def network_problem(exc: BaseException) -> str:
    """A network failure in a few words, read from the exception and its causes."""
    texts = []
    seen: BaseException | None = exc
    while seen is not None and len(texts) < 10:
        texts.append(f"{seen.__class__.__name__} {seen}".lower())
        seen = seen.__cause__ or seen.__context__
    text = " ".join(texts)
    if "refused" in text:
        return "connection refused"
    if "timeout" in text or "timed out" in text:
        return "no answer in time"
    if "name or service not known" in text or "getaddrinfo" in text or "nodename nor servname" in text:
        return "host name not found"
    if "ssl" in text or "certificate" in text:
        return "TLS handshake failed"
    return "no connection"
