"""Settings: the one place that reads the environment.

`load_settings()` reads os.environ (after python-dotenv loads `.env`), converts types, and fails with
one message that lists every invalid variable. Everything else receives a `Settings` object.
"""

from __future__ import annotations

import difflib
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dotenv import dotenv_values, find_dotenv, load_dotenv

from errors import ConfigError
from hours import BusinessHours, parse_holidays, parse_timezone, parse_weekly_windows
from redis_link import parse_sentinels
from usage import parse_prices

DEFAULT_SYSTEM_PROMPT = (
    "Você é o atendente virtual de uma pequena empresa no WhatsApp. Responda sempre em português do "
    "Brasil, com educação, simpatia e objetividade, em mensagens curtas como as de um atendente humano. "
    "Use o histórico da conversa para manter o contexto. Quando o cliente mandar várias mensagens "
    "seguidas, responda a todas numa única resposta. Não invente preços, prazos, estoque ou políticas: "
    "se não souber, diga que vai confirmar com a equipe. Não use formatação Markdown pesada."
)
DEFAULT_FALLBACK_REPLY = (
    "Desculpe, estou com uma instabilidade no momento. Já registrei sua mensagem e retorno em breve!"
)
DEFAULT_MEDIA_FAILED_NOTICE = (
    "Não consegui abrir {items} que você enviou. Pode mandar de novo ou me contar por escrito?"
)
# Conversation control (conversation.py, reply_policy.py): customer-facing texts and keywords, in pt-BR.
DEFAULT_HANDOFF_KEYWORDS = (
    "atendente",
    "atendimento humano",
    "falar com um humano",
    "falar com humano",
    "falar com uma pessoa",
    "falar com alguém",
    "pessoa de verdade",
)
DEFAULT_HANDOFF_REPLY = (
    "Certo! Vou chamar uma pessoa da nossa equipe para falar com você. Aguarde só um pouquinho, por favor."
)
DEFAULT_HANDOFF_CLOSED_REPLY = (
    "Certo! Nossa equipe não está disponível agora, mas uma pessoa vai falar com você {next_open}. "
    "Sua mensagem já ficou registrada."
)
DEFAULT_OPT_OUT_KEYWORDS = ("parar", "pare", "sair", "stop", "cancelar", "descadastrar")
DEFAULT_OPT_OUT_REPLY = (
    "Tudo bem, você não vai mais receber mensagens automáticas deste número. "
    "Se quiser voltar a falar com a gente, é só enviar VOLTAR."
)
DEFAULT_OPT_IN_KEYWORDS = ("voltar", "start")
DEFAULT_OPT_IN_REPLY = "Que bom ter você de volta! Como posso ajudar?"
DEFAULT_OUT_OF_HOURS_REPLY = (
    "Olá! Recebemos sua mensagem, mas estamos fora do horário de atendimento agora. "
    "Voltamos {next_open} e respondemos assim que possível."
)
BOT_HOURS_MODES = ("always", "business", "outside")
# What Gemini reads inline (https://ai.google.dev/gemini-api/docs/audio, /image-understanding, /document-processing).
DEFAULT_MEDIA_ALLOWED_TYPES = (
    "audio/ogg",
    "audio/mpeg",
    "audio/mp3",
    "audio/mp4",
    "audio/aac",
    "audio/wav",
    "audio/x-wav",
    "audio/flac",
    "audio/aiff",
    "image/jpeg",
    "image/png",
    "image/webp",
    "image/heic",
    "image/heif",
    "application/pdf",
)
MIB = 1024 * 1024
GEMINI_INLINE_LIMIT_BYTES = 20 * 1000 * 1000  # per request, base64 included
WEBHOOK_ENVELOPE_BYTES = 256 * 1024  # a media webhook's JSON around the base64 (key, fields, jpegThumbnail)


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Every tunable of the service; built once by `load_settings()` and passed down."""

    # HTTP server
    host: str = "0.0.0.0"
    port: int = 5000
    log_level: str = "INFO"
    max_body_bytes: int = 10 * MIB  # raised automatically to admit base64 media up to MEDIA_MAX_BYTES
    max_message_chars: int = 4000  # a message's text is cut to this before Redis or Gemini

    # Webhook authentication: closed by default (a token is generated when neither secret is set)
    webhook_token: str = field(default="", repr=False)
    webhook_jwt_secret: str = field(default="", repr=False)
    webhook_auth: bool = True  # False (WEBHOOK_AUTH=off) opens /webhook and /webhook/mega to anyone

    # Evolution API (outbound)
    evolution_api: str = ""  # full sendText URL or the server's base URL
    authentication_api_key: str = field(default="", repr=False)
    evolution_api_version: int = 2  # body shape of sendText: 2 (text) or 1 (textMessage.text)
    send_delay_ms: int = 0  # Evolution's "typing…" delay before the message goes out
    send_timeout_seconds: float = 15.0
    send_max_retries: int = 3

    # Meta WhatsApp Cloud API (on when app secret, verify token, access token and phone number id are set)
    meta_app_secret: str = field(default="", repr=False)
    meta_verify_token: str = field(default="", repr=False)
    meta_access_token: str = field(default="", repr=False)
    meta_phone_number_id: str = ""
    meta_graph_url: str = "https://graph.facebook.com"
    meta_api_version: str = "v23.0"
    meta_mark_as_read: bool = False

    # Mega API (on when base URL, instance id and token are set)
    mega_api_base_url: str = ""
    mega_instance_id: str = ""
    mega_api_token: str = field(default="", repr=False)

    # Twilio WhatsApp (on when account SID, auth token, sender and public URL are set)
    twilio_account_sid: str = ""
    twilio_auth_token: str = field(default="", repr=False)
    twilio_whatsapp_from: str = ""
    twilio_public_url: str = ""
    twilio_api_url: str = "https://api.twilio.com"

    # Redis
    redis_enabled: bool = True
    redis_uri: str = "redis://localhost:6379/0"
    redis_prefix: str = "wa_assistant"
    redis_retry_seconds: float = 2.0  # how long to stay on the in-process fallback before retrying
    redis_sentinels: str = ""  # host:port,... of Redis Sentinels; empty = CACHE_REDIS_URI's server itself
    redis_sentinel_master: str = "mymaster"  # the master's name the sentinels monitor
    tenants_file: str = ""  # TOML file of the businesses this deployment serves (tenants.py); empty = one business
    tenants_reload_seconds: float = 5.0  # how often every process looks for a changed TENANTS_FILE
    knowledge_cache_mb: float = 256.0  # memory for the tenants' knowledge indexes per process (least used unloaded)
    redis_cluster: bool = False  # CACHE_REDIS_URI is a node of a Redis Cluster
    due_shards: int = 16  # on a cluster: shards of the chats (each its hash slot, due set, leases, stream)

    # Gemini
    gemini_api_key: str = field(default="", repr=False)
    gemini_model: str = "gemini-3-flash-preview"
    gemini_base_url: str = ""
    gemini_timeout_seconds: float = 30.0
    gemini_max_attempts: int = 4  # attempts per reply, including the first (SDK retry options)
    gemini_retry_initial_seconds: float = 1.0  # first backoff; doubles per attempt, with jitter
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    fallback_reply: str = DEFAULT_FALLBACK_REPLY

    # Model providers (ai_service.py): which answers, which takes over when it keeps failing, and their prices
    ai_provider: str = "gemini"  # gemini | openai
    ai_fallback_provider: str = ""  # '' = none; else the other provider
    openai_api_key: str = field(default="", repr=False)
    openai_base_url: str = ""  # an OpenAI-compatible server (Ollama, vLLM, LM Studio, OpenRouter...); '' = OpenAI
    openai_model: str = "gpt-4o-mini"
    openai_timeout_seconds: float = 30.0
    openai_max_retries: int = 2  # the client's own retries (429, 5xx, connection errors), after the first try
    openai_transcribe_model: str = "whisper-1"  # voice notes are transcribed with it before the reply
    model_prices: str = ""  # model:input/output,... in USD per million tokens; '' = costs not computed

    # Knowledge base and persona (knowledge.py)
    business_name: str = ""  # named to Gemini beside the persona; empty = not named
    knowledge_dir: str = ""  # folder of .txt/.md files; empty = no knowledge base
    rag_top_k: int = 4  # chunks put into the prompt per burst (retrieval mode)
    rag_whole_max_chars: int = 30_000  # a knowledge base up to this size goes whole into the prompt; 0 = never
    rag_auto_reload: bool = True  # reload when files are added, changed or removed
    rag_watch_interval: float = 5.0  # seconds between looks at the folder (and at the reload signal)
    admin_token: str = field(default="", repr=False)  # bearer token of the admin endpoints; empty = disabled
    secret_key: str = field(default="", repr=False)  # signs the admin session cookie; empty = generated and kept
    simulator_enabled: bool = True  # the WhatsApp simulator at /simulator
    ai_dry_run: bool = False  # answer every burst with a canned text quoting it, without calling Gemini

    # Debounce and delivery
    debounce_seconds: float = 120.0
    debounce_max_wait_seconds: float = 600.0
    dedup_ttl_seconds: int = 24 * 3600
    groups_enabled: bool = False
    lease_seconds: float = 60.0  # a claimed chat returns to the queue if its worker is silent this long
    delivery_max_attempts: int = 12  # sends tried (with backoff) before a burst is dead-lettered
    delivery_retry_base_seconds: float = 5.0
    reply_max_age_minutes: float = 30.0  # a reply not delivered by then is dead-lettered, never sent late

    # Media (voice notes, images, documents go to Gemini as inline bytes)
    media_max_bytes: int = 8 * MIB  # per item
    media_max_burst_bytes: int = 14 * MIB  # per burst; base64 makes it ~18.7 MB, under Gemini's 20 MB per request
    media_allowed_types: tuple[str, ...] = DEFAULT_MEDIA_ALLOWED_TYPES
    media_fetch_attempts: int = 3  # tries per item (connection errors, timeouts, 429/5xx) before giving up on it
    media_fetch_timeout_seconds: float = 30.0
    media_failed_notice: str = DEFAULT_MEDIA_FAILED_NOTICE  # added to the reply; {items} = "o áudio", ...

    # Loop guard: another bot answering every reply would otherwise talk to us forever
    max_replies_per_hour: int = 30  # per chat; 0 = no limit

    # Conversation control (conversation.py, reply_policy.py)
    handoff_pause_minutes: float = 120.0  # a human's message pauses the bot this long in that chat; 0 = off
    bot_resume_keyword: str = "#bot"
    bot_pause_keyword: str = "#humano"
    bot_close_keyword: str = "#encerrar"
    handoff_keywords: tuple[str, ...] = DEFAULT_HANDOFF_KEYWORDS
    handoff_reply: str = DEFAULT_HANDOFF_REPLY
    handoff_closed_reply: str = DEFAULT_HANDOFF_CLOSED_REPLY
    handoff_notify_url: str = ""
    opt_out_keywords: tuple[str, ...] = DEFAULT_OPT_OUT_KEYWORDS
    opt_out_reply: str = DEFAULT_OPT_OUT_REPLY
    opt_in_keywords: tuple[str, ...] = DEFAULT_OPT_IN_KEYWORDS
    opt_in_reply: str = DEFAULT_OPT_IN_REPLY
    business_hours: str = ""  # empty = always open
    timezone: str = "America/Sao_Paulo"
    holidays: str = ""
    bot_hours: str = "always"  # always | business (AI only when open) | outside (AI only when closed)
    out_of_hours_reply: str = DEFAULT_OUT_OF_HOURS_REPLY
    conversation_idle_minutes: float = 1440.0
    split_messages: bool = False
    split_max_parts: int = 4
    typing_ms_per_char: int = 40
    typing_max_ms: int = 5000
    hours: BusinessHours = field(init=False, repr=False, compare=False)
    # What load_settings noticed about the .env file (not found, unknown names), said at start-up.
    startup_notes: tuple[str, ...] = field(default=(), repr=False, compare=False)
    env_file: str = field(default="", compare=False)  # the .env read at start ('' = none)

    # History
    history_max_turns: int = 20
    history_ttl_seconds: int = 7 * 24 * 3600

    # Archive (archive/): PostgreSQL; empty = no archive
    database_url: str = field(default="", repr=False)
    archive_claim_idle_seconds: float = 30.0  # a dead writer's stream entries are taken over after this long
    archive_retention_days: int = 0  # rows older than this are purged daily; 0 (empty) = kept forever

    # Operations: metrics and logs
    metrics_enabled: bool = True  # /metrics and /health's deployment totals (prometheus-client multiprocess mode)
    metrics_token: str = field(default="", repr=False)  # bearer token /metrics asks for; empty = open
    log_format: str = "text"  # text | json (one JSON object per line, with correlation_id)

    # Outbound pacing (pacing.py): sends per second per sending number, by gateway (0 = not paced), and the gap
    # between two messages to one customer. Meta and Twilio: their documented limits; Evolution and Mega publish none.
    outbound_rate_evolution: float = 2.0
    outbound_rate_meta: float = 80.0
    outbound_rate_twilio: float = 10.0
    outbound_rate_mega: float = 2.0
    outbound_customer_gap_seconds: float = 1.0

    # Background worker
    worker_enabled: bool = True
    worker_concurrency: int = 16
    worker_poll_seconds: float = 0.2

    def __post_init__(self) -> None:
        # Parsed once here (frozen: object.__setattr__), so tests building Settings directly get it too.
        hours = BusinessHours.parse(self.business_hours, self.timezone, self.holidays)
        object.__setattr__(self, "hours", hours)

    @property
    def handoff_pause_seconds(self) -> float:
        return self.handoff_pause_minutes * 60

    @property
    def conversation_idle_seconds(self) -> float:
        return self.conversation_idle_minutes * 60

    @property
    def webhook_body_limit(self) -> int:
        """MAX_BODY_BYTES, or more: a webhook carrying a MEDIA_MAX_BYTES item as base64 (plus its JSON envelope,
        thumbnails included) must fit."""
        return max(self.max_body_bytes, -(-self.media_max_bytes * 4 // 3) + WEBHOOK_ENVELOPE_BYTES)

    @property
    def gemini_configured(self) -> bool:
        return bool(self.gemini_api_key)

    @property
    def openai_configured(self) -> bool:
        """An OpenAI key, or a compatible server's URL (a local Ollama needs no key)."""
        return bool(self.openai_api_key or self.openai_base_url)

    def provider_configured(self, name: str) -> bool:
        return {"gemini": self.gemini_configured, "openai": self.openai_configured}.get(name, False)

    @property
    def ai_configured(self) -> bool:
        """The provider that answers first can be called (or AI_DRY_RUN)."""
        return self.ai_dry_run or self.provider_configured(self.ai_provider)

    @property
    def gateway_configured(self) -> bool:
        return bool(self.evolution_api)

    @property
    def any_gateway_configured(self) -> bool:
        return self.gateway_configured or self.meta_enabled or self.mega_enabled or self.twilio_enabled

    @property
    def meta_enabled(self) -> bool:
        return all((self.meta_app_secret, self.meta_verify_token, self.meta_access_token, self.meta_phone_number_id))

    @property
    def mega_enabled(self) -> bool:
        return all((self.mega_api_base_url, self.mega_instance_id, self.mega_api_token))

    @property
    def twilio_enabled(self) -> bool:
        return all((self.twilio_account_sid, self.twilio_auth_token, self.twilio_whatsapp_from, self.twilio_public_url))


def _to_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected true/false, got {raw!r}")


def _finite(value: Any, raw: str) -> Any:
    """Reject "nan" (every comparison with it is False, so range checks let it through) and "inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {raw!r}")
    return value


def _positive(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(raw: str) -> Any:
        value = _finite(convert(raw), raw)
        if value <= 0:
            raise ValueError(f"must be > 0, got {raw!r}")
        return value

    return parse


def _non_negative(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(raw: str) -> Any:
        value = _finite(convert(raw), raw)
        if value < 0:
            raise ValueError(f"must be >= 0, got {raw!r}")
        return value

    return parse


def _port(raw: str) -> int:
    port = int(raw)
    if not 1 <= port <= 65535:
        raise ValueError(f"must be 1-65535, got {raw!r}")
    return port


def _log_level(raw: str) -> str:
    level = raw.strip().upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ValueError(f"unknown level {raw!r}")
    return level


def _api_version(raw: str) -> int:
    version = int(raw.strip().lstrip("vV"))
    if version not in (1, 2):
        raise ValueError(f"expected 1 or 2, got {raw!r}")
    return version


def _strip(raw: str) -> str:
    return raw.strip()


def _words(raw: str) -> tuple[str, ...]:
    """A comma-separated list of keywords or phrases, each trimmed, empty ones dropped."""
    words = tuple(dict.fromkeys(word.strip() for word in raw.split(",") if word.strip()))
    if not words:
        raise ValueError("expected a comma-separated list of words")
    return words


def _keyword(raw: str) -> str:
    word = raw.strip()
    if not word or any(c.isspace() for c in word):
        raise ValueError(f"expected one word without spaces, got {raw!r}")
    return word


def _bot_hours(raw: str) -> str:
    mode = raw.strip().lower()
    if mode not in BOT_HOURS_MODES:
        raise ValueError(f"expected one of {', '.join(BOT_HOURS_MODES)}, got {raw!r}")
    return mode


def _checked(parse: Callable[[str], Any]) -> Callable[[str], str]:
    """Keep the raw text, after `parse` found it valid (Settings parses it once into `hours`)."""

    def check(raw: str) -> str:
        parse(raw)
        return raw.strip()

    return check


def _url(*schemes: str) -> Callable[[str], str]:
    """A URL with one of `schemes` and a host (`unix` sockets have a path instead)."""
    example = {"redis": "redis://localhost:6379/0"}.get(schemes[0], f"{schemes[0]}://host:port")

    def parse(raw: str) -> str:
        url = raw.strip()
        parts = urlsplit(url)
        if parts.scheme.lower() not in schemes or not (parts.netloc or (parts.scheme == "unix" and parts.path)):
            raise ValueError(f"expected a URL like {example} ({' or '.join(schemes)}), got {raw!r}")
        try:
            parts.port  # noqa: B018 (raises on a port that is not a number or out of range)
        except ValueError as exc:
            raise ValueError(f"bad port in {raw!r}") from exc
        return url

    return parse


_HTTP_URL = _url("http", "https")


AI_PROVIDERS = ("gemini", "openai")
LOG_FORMATS = ("text", "json")


def _log_format(raw: str) -> str:
    kind = raw.strip().lower()
    if kind not in LOG_FORMATS:
        raise ValueError(f"expected one of {', '.join(LOG_FORMATS)}, got {raw!r}")
    return kind


def _provider(raw: str) -> str:
    name = raw.strip().lower()
    if name not in AI_PROVIDERS:
        raise ValueError(f"expected one of {', '.join(AI_PROVIDERS)}, got {raw!r}")
    return name


def _days_or_forever(raw: str) -> int:
    """A whole number of days, or empty / 0 for "forever" (0)."""
    text = raw.strip()
    if not text:
        return 0
    days = int(text)
    if days < 0:
        raise ValueError(f"expected a number of days (empty = keep forever), got {raw!r}")
    return days


def _mime_types(raw: str) -> tuple[str, ...]:
    types = tuple(dict.fromkeys(t.strip().lower() for t in raw.split(",") if t.strip()))
    for mime in types:
        if mime.count("/") != 1:
            raise ValueError(f"expected a comma-separated list of types like audio/ogg, got {mime!r}")
    return types


# ENV NAME -> (Settings field, converter). Each name is documented in .env.example and the README.
ENV_VARIABLES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "HOST": ("host", _strip),
    "PORT": ("port", _port),
    "LOG_LEVEL": ("log_level", _log_level),
    "MAX_BODY_BYTES": ("max_body_bytes", _positive(int)),
    "MAX_MESSAGE_CHARS": ("max_message_chars", _positive(int)),
    "WEBHOOK_TOKEN": ("webhook_token", _strip),
    "WEBHOOK_JWT_SECRET": ("webhook_jwt_secret", _strip),
    "WEBHOOK_AUTH": ("webhook_auth", _to_bool),
    "EVOLUTION_API": ("evolution_api", _HTTP_URL),
    "AUTHENTICATION_API_KEY": ("authentication_api_key", _strip),
    "EVOLUTION_API_VERSION": ("evolution_api_version", _api_version),
    "SEND_DELAY_MS": ("send_delay_ms", _non_negative(int)),
    "SEND_TIMEOUT_SECONDS": ("send_timeout_seconds", _positive(float)),
    "SEND_MAX_RETRIES": ("send_max_retries", _non_negative(int)),
    "META_APP_SECRET": ("meta_app_secret", _strip),
    "META_VERIFY_TOKEN": ("meta_verify_token", _strip),
    "META_ACCESS_TOKEN": ("meta_access_token", _strip),
    "META_PHONE_NUMBER_ID": ("meta_phone_number_id", _strip),
    "META_GRAPH_URL": ("meta_graph_url", _HTTP_URL),
    "META_API_VERSION": ("meta_api_version", _strip),
    "META_MARK_AS_READ": ("meta_mark_as_read", _to_bool),
    "MEGA_API_BASE_URL": ("mega_api_base_url", _HTTP_URL),
    "MEGA_INSTANCE_ID": ("mega_instance_id", _strip),
    "MEGA_API_TOKEN": ("mega_api_token", _strip),
    "TWILIO_ACCOUNT_SID": ("twilio_account_sid", _strip),
    "TWILIO_AUTH_TOKEN": ("twilio_auth_token", _strip),
    "TWILIO_WHATSAPP_FROM": ("twilio_whatsapp_from", _strip),
    "TWILIO_PUBLIC_URL": ("twilio_public_url", _HTTP_URL),
    "TWILIO_API_URL": ("twilio_api_url", _HTTP_URL),
    "CACHE_REDIS_ENABLED": ("redis_enabled", _to_bool),
    "CACHE_REDIS_URI": ("redis_uri", _url("redis", "rediss", "unix")),
    "CACHE_REDIS_PREFIX_KEY": ("redis_prefix", _strip),
    "REDIS_RETRY_SECONDS": ("redis_retry_seconds", _positive(float)),
    "CACHE_REDIS_SENTINELS": ("redis_sentinels", _checked(parse_sentinels)),
    "CACHE_REDIS_SENTINEL_MASTER": ("redis_sentinel_master", _strip),
    "CACHE_REDIS_CLUSTER": ("redis_cluster", _to_bool),
    "TENANTS_FILE": ("tenants_file", _strip),
    "TENANTS_RELOAD_SECONDS": ("tenants_reload_seconds", _positive(float)),
    "KNOWLEDGE_CACHE_MB": ("knowledge_cache_mb", _positive(float)),
    "DUE_SHARDS": ("due_shards", _positive(int)),
    "GEMINI_API_KEY": ("gemini_api_key", _strip),
    "GEMINI_MODEL": ("gemini_model", _strip),
    "GEMINI_BASE_URL": ("gemini_base_url", _HTTP_URL),
    "GEMINI_TIMEOUT_SECONDS": ("gemini_timeout_seconds", _positive(float)),
    "GEMINI_MAX_ATTEMPTS": ("gemini_max_attempts", _positive(int)),
    "GEMINI_RETRY_INITIAL_SECONDS": ("gemini_retry_initial_seconds", _positive(float)),
    "SYSTEM_PROMPT": ("system_prompt", str),
    "AI_PROVIDER": ("ai_provider", _provider),
    "AI_FALLBACK_PROVIDER": ("ai_fallback_provider", _provider),
    "OPENAI_API_KEY": ("openai_api_key", _strip),
    "OPENAI_BASE_URL": ("openai_base_url", _HTTP_URL),
    "OPENAI_MODEL": ("openai_model", _strip),
    "OPENAI_TIMEOUT_SECONDS": ("openai_timeout_seconds", _positive(float)),
    "OPENAI_MAX_RETRIES": ("openai_max_retries", _non_negative(int)),
    "OPENAI_TRANSCRIBE_MODEL": ("openai_transcribe_model", _strip),
    "MODEL_PRICES": ("model_prices", _checked(parse_prices)),
    "FALLBACK_REPLY": ("fallback_reply", str),
    "BUSINESS_NAME": ("business_name", _strip),
    "KNOWLEDGE_DIR": ("knowledge_dir", _strip),
    "RAG_TOP_K": ("rag_top_k", _positive(int)),
    "RAG_WHOLE_MAX_CHARS": ("rag_whole_max_chars", _non_negative(int)),
    "RAG_AUTO_RELOAD": ("rag_auto_reload", _to_bool),
    "RAG_WATCH_INTERVAL": ("rag_watch_interval", _positive(float)),
    "ADMIN_TOKEN": ("admin_token", _strip),
    "SECRET_KEY": ("secret_key", _strip),
    "SIMULATOR_ENABLED": ("simulator_enabled", _to_bool),
    "AI_DRY_RUN": ("ai_dry_run", _to_bool),
    "DEBOUNCE_SECONDS": ("debounce_seconds", _non_negative(float)),
    "DEBOUNCE_MAX_WAIT_SECONDS": ("debounce_max_wait_seconds", _non_negative(float)),
    "DEDUP_TTL_SECONDS": ("dedup_ttl_seconds", _positive(int)),
    "GROUPS_ENABLED": ("groups_enabled", _to_bool),
    "LEASE_SECONDS": ("lease_seconds", _positive(float)),
    "DELIVERY_MAX_ATTEMPTS": ("delivery_max_attempts", _positive(int)),
    "DELIVERY_RETRY_BASE_SECONDS": ("delivery_retry_base_seconds", _positive(float)),
    "REPLY_MAX_AGE_MINUTES": ("reply_max_age_minutes", _positive(float)),
    "MEDIA_MAX_BYTES": ("media_max_bytes", _positive(int)),
    "MEDIA_MAX_BURST_BYTES": ("media_max_burst_bytes", _positive(int)),
    "MEDIA_ALLOWED_TYPES": ("media_allowed_types", _mime_types),
    "MEDIA_FETCH_ATTEMPTS": ("media_fetch_attempts", _positive(int)),
    "MEDIA_FETCH_TIMEOUT_SECONDS": ("media_fetch_timeout_seconds", _positive(float)),
    "MEDIA_FAILED_NOTICE": ("media_failed_notice", str),
    "MAX_REPLIES_PER_HOUR": ("max_replies_per_hour", _non_negative(int)),
    "HANDOFF_PAUSE_MINUTES": ("handoff_pause_minutes", _non_negative(float)),
    "BOT_RESUME_KEYWORD": ("bot_resume_keyword", _keyword),
    "BOT_PAUSE_KEYWORD": ("bot_pause_keyword", _keyword),
    "BOT_CLOSE_KEYWORD": ("bot_close_keyword", _keyword),
    "HANDOFF_KEYWORDS": ("handoff_keywords", _words),
    "HANDOFF_REPLY": ("handoff_reply", str),
    "HANDOFF_CLOSED_REPLY": ("handoff_closed_reply", str),
    "HANDOFF_NOTIFY_URL": ("handoff_notify_url", _HTTP_URL),
    "OPT_OUT_KEYWORDS": ("opt_out_keywords", _words),
    "OPT_OUT_REPLY": ("opt_out_reply", str),
    "OPT_IN_KEYWORDS": ("opt_in_keywords", _words),
    "OPT_IN_REPLY": ("opt_in_reply", str),
    "BUSINESS_HOURS": ("business_hours", _checked(parse_weekly_windows)),
    "TIMEZONE": ("timezone", _checked(parse_timezone)),
    "HOLIDAYS": ("holidays", _checked(parse_holidays)),
    "BOT_HOURS": ("bot_hours", _bot_hours),
    "OUT_OF_HOURS_REPLY": ("out_of_hours_reply", str),
    "CONVERSATION_IDLE_MINUTES": ("conversation_idle_minutes", _positive(float)),
    "SPLIT_MESSAGES": ("split_messages", _to_bool),
    "SPLIT_MAX_PARTS": ("split_max_parts", _positive(int)),
    "TYPING_MS_PER_CHAR": ("typing_ms_per_char", _non_negative(int)),
    "TYPING_MAX_MS": ("typing_max_ms", _non_negative(int)),
    "HISTORY_MAX_TURNS": ("history_max_turns", _non_negative(int)),
    "HISTORY_TTL_SECONDS": ("history_ttl_seconds", _positive(int)),
    "DATABASE_URL": ("database_url", _url("postgresql", "postgres")),
    "ARCHIVE_CLAIM_IDLE_SECONDS": ("archive_claim_idle_seconds", _positive(float)),
    "ARCHIVE_RETENTION_DAYS": ("archive_retention_days", _days_or_forever),
    "METRICS_ENABLED": ("metrics_enabled", _to_bool),
    "METRICS_TOKEN": ("metrics_token", _strip),
    "LOG_FORMAT": ("log_format", _log_format),
    "OUTBOUND_RATE_PER_SECOND_EVOLUTION": ("outbound_rate_evolution", _non_negative(float)),
    "OUTBOUND_RATE_PER_SECOND_META": ("outbound_rate_meta", _non_negative(float)),
    "OUTBOUND_RATE_PER_SECOND_TWILIO": ("outbound_rate_twilio", _non_negative(float)),
    "OUTBOUND_RATE_PER_SECOND_MEGA": ("outbound_rate_mega", _non_negative(float)),
    "OUTBOUND_CUSTOMER_GAP_SECONDS": ("outbound_customer_gap_seconds", _non_negative(float)),
    "WORKER_ENABLED": ("worker_enabled", _to_bool),
    "WORKER_CONCURRENCY": ("worker_concurrency", _positive(int)),
    "WORKER_POLL_SECONDS": ("worker_poll_seconds", _positive(float)),
}
# Customer-facing texts that may be set empty, to send nothing in that case; every other empty value means default.
MAY_BE_EMPTY = frozenset(
    {
        "fallback_reply",
        "media_failed_notice",
        "handoff_reply",
        "handoff_closed_reply",
        "opt_out_reply",
        "opt_in_reply",
        "out_of_hours_reply",
    }
)
# Read by load_settings() itself: its content replaces SYSTEM_PROMPT.
SYSTEM_PROMPT_FILE = "SYSTEM_PROMPT_FILE"
# Read by prometheus-client itself when first imported (metrics.py calls `metrics_directory()` before that).
METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"


def metrics_directory() -> str:
    """PROMETHEUS_MULTIPROC_DIR, set to <memory dir>/wa-assistant-metrics-<uid> when empty, and created: every
    process of a host writes its metric files there."""
    path = os.environ.get(METRICS_DIR, "").strip()
    if not path:
        path = os.path.join(memory_directory(), f"wa-assistant-metrics-{os.getuid()}")
        os.environ[METRICS_DIR] = path
    os.makedirs(path, exist_ok=True)
    return path


def memory_directory() -> str:
    """/dev/shm when this host has a writable one, else the temporary directory. Every counter increment writes to
    a memory-mapped metric file; on a disk filesystem (ext4 /tmp) those writes cost a webhook about 8 % of its
    throughput under load (bench row M1), on tmpfs they cost nothing measurable."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return tempfile.gettempdir()


# Other names accepted for a variable (ALIAS -> NAME); setting both to different values is an error.
ENV_ALIASES: dict[str, str] = {"RAG_DIR": "KNOWLEDGE_DIR"}


def load_settings(environ: Mapping[str, str] | None = None, *, dotenv: bool = True) -> Settings:
    """Build Settings from `environ` (default: os.environ after loading `.env`).

    Raises:
        ConfigError: listing every variable that is set but invalid.
    """
    notes: tuple[str, ...] = ()
    env_file = ""
    if environ is None:
        if dotenv:
            env_file, notes = _read_dotenv()
        environ = os.environ
    values: dict[str, Any] = {}
    problems: list[str] = []
    for name, (attr, convert) in ENV_VARIABLES.items():
        raw = environ.get(name)
        if raw is None or (raw.strip() == "" and attr not in MAY_BE_EMPTY):
            continue
        try:
            values[attr] = convert(raw)
        except ValueError as exc:
            problems.append(f"{name}: {exc}")
    problems += _read_aliases(environ, values)
    prompt_file = environ.get(SYSTEM_PROMPT_FILE, "").strip()
    if prompt_file:
        try:
            prompt = Path(prompt_file).read_text(encoding="utf-8").strip()
            if prompt:  # an empty file keeps the default persona, as an empty SYSTEM_PROMPT does
                values["system_prompt"] = prompt
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{SYSTEM_PROMPT_FILE}: cannot read {prompt_file!r} ({exc.__class__.__name__})")
    for text_attr in MAY_BE_EMPTY:
        if text_attr in values:
            values[text_attr] = values[text_attr].strip()
    settings_fields = {f.name for f in fields(Settings)}
    assert set(values) <= settings_fields
    if values.get("bot_hours") == "outside" and not environ.get("BUSINESS_HOURS", "").strip():
        problems.append(
            "BOT_HOURS: 'outside' needs BUSINESS_HOURS (without it the business is always open and the bot would "
            "never answer)"
        )
    problems += _redis_topology_problems(values)
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    settings = Settings(**values, startup_notes=notes, env_file=env_file)
    if settings.tenants_file:
        from tenants import TenantDirectory  # here: tenants.py builds on this module

        TenantDirectory(settings, path=settings.tenants_file)  # a file that cannot be used stops the start
    return settings


def _redis_topology_problems(values: Mapping[str, Any]) -> list[str]:
    """A cluster is neither behind sentinels nor numbered databases: say so at start, not at the first message."""
    if not values.get("redis_cluster"):
        return []
    problems = []
    if values.get("redis_sentinels"):
        problems.append(
            "CACHE_REDIS_CLUSTER: set together with CACHE_REDIS_SENTINELS; a Redis Cluster fails over by itself, "
            "without sentinels: set one of the two"
        )
    path = urlsplit(str(values.get("redis_uri", ""))).path.strip("/")
    if path not in ("", "0"):
        problems.append(f"CACHE_REDIS_URI: a Redis Cluster has only database 0, not {path!r}")
    return problems


# Every name this service reads: a name in .env that is none of these but close to one is most likely a typo.
KNOWN_NAMES = frozenset([*ENV_VARIABLES, *ENV_ALIASES, SYSTEM_PROMPT_FILE, METRICS_DIR])
_OUR_PREFIXES = tuple({name.split("_", 1)[0] + "_" for name in KNOWN_NAMES})


def _read_dotenv() -> tuple[str, tuple[str, ...]]:
    """Load `.env` (the environment wins); returns its path and what a newcomer would want to know about it: that
    none was found, or names in it that this service does not read but that look like its own (a typo)."""
    path = find_dotenv(usecwd=True)
    if not path:
        return "", (f"no .env file found (looked in {os.getcwd()} and above): settings come from the environment",)
    load_dotenv(path, override=False)
    notes = []
    for name in dotenv_values(path):
        if name in KNOWN_NAMES:
            continue
        close = difflib.get_close_matches(name, KNOWN_NAMES, n=1, cutoff=0.8)
        if close:
            notes.append(f"{name} in {path} is not a setting of this service: did you mean {close[0]}?")
        elif name.startswith(_OUR_PREFIXES):
            notes.append(f"{name} in {path} is not a setting of this service (see .env.example)")
    return path, tuple(notes)


def _read_aliases(environ: Mapping[str, str], values: dict[str, Any]) -> list[str]:
    """Fill `values` from ENV_ALIASES where the main name is unset; returns the conflicts found."""
    problems = []
    for alias, name in ENV_ALIASES.items():
        raw = environ.get(alias, "")
        if not raw.strip():
            continue
        attr, convert = ENV_VARIABLES[name]
        try:
            value = convert(raw)
        except ValueError as exc:
            problems.append(f"{alias}: {exc}")
            continue
        if environ.get(name, "").strip():
            if values.get(attr) != value:
                problems.append(f"{alias}: is another name for {name}, which is set to something else; set one")
            continue
        values[attr] = value
    return problems


def missing_for_production(settings: Settings) -> list[str]:
    """Human-readable list of what is not configured yet (the service still starts)."""
    missing = list(settings.startup_notes)
    if settings.ai_dry_run:
        missing.append("AI_DRY_RUN=true: every burst gets a canned [simulação] text; Gemini is not called")
    elif settings.ai_provider == "gemini" and not settings.gemini_configured:
        missing.append("GEMINI_API_KEY is not set: every burst will get FALLBACK_REPLY instead of Gemini")
    elif settings.ai_provider == "openai" and not settings.openai_configured:
        missing.append("OPENAI_API_KEY (or OPENAI_BASE_URL) is not set: every burst will get FALLBACK_REPLY")
    fallback = settings.ai_fallback_provider
    if fallback and fallback != settings.ai_provider and not settings.provider_configured(fallback):
        missing.append(f"AI_FALLBACK_PROVIDER={fallback} is not configured: there is no fallback model")
    if not settings.any_gateway_configured and settings.simulator_enabled:
        missing.append("no gateway is configured: try the assistant in the WhatsApp simulator at /simulator")
    if not settings.gateway_configured:
        missing.append("EVOLUTION_API is not set: replies to Evolution chats cannot be sent (dead-lettered at once)")
    partial = {
        "Meta (META_APP_SECRET, META_VERIFY_TOKEN, META_ACCESS_TOKEN, META_PHONE_NUMBER_ID)": (
            settings.meta_enabled,
            (settings.meta_app_secret, settings.meta_verify_token, settings.meta_access_token),
        ),
        "Mega (MEGA_API_BASE_URL, MEGA_INSTANCE_ID, MEGA_API_TOKEN)": (
            settings.mega_enabled,
            (settings.mega_api_base_url, settings.mega_instance_id, settings.mega_api_token),
        ),
        "Twilio (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, TWILIO_WHATSAPP_FROM, TWILIO_PUBLIC_URL)": (
            settings.twilio_enabled,
            (settings.twilio_account_sid, settings.twilio_auth_token, settings.twilio_public_url),
        ),
    }

    for gateway, (enabled, some_values) in partial.items():
        if not enabled and any(some_values):
            missing.append(f"{gateway} is only partly configured: that gateway stays off until all are set")
    if settings.media_max_burst_bytes * 4 / 3 > GEMINI_INLINE_LIMIT_BYTES:
        missing.append(
            "MEDIA_MAX_BURST_BYTES is above what fits in one Gemini request as base64 (about 15 MB): "
            "bursts with that much media will be refused by Gemini"
        )
    if not settings.redis_enabled:
        missing.append("CACHE_REDIS_ENABLED=false: in-process debounce only (one process, nothing survives a restart)")
    if settings.bot_hours == "business" and settings.hours.always_open:
        missing.append("BOT_HOURS=business but BUSINESS_HOURS is empty (always open): the AI answers at any hour")
    if settings.knowledge_dir and not Path(settings.knowledge_dir).is_dir():
        missing.append(f"KNOWLEDGE_DIR={settings.knowledge_dir!r} is not a folder: no knowledge until it exists")
    return missing
