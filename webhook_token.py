"""Secrets the service generates when the owner set none, kept in Redis (every process and host on it agrees) and
in a file beside `.env` (so a restart, or a start while Redis is down, keeps them): the token Evolution and Mega
webhooks must carry (the webhook is closed by default; WEBHOOK_TOKEN or WEBHOOK_JWT_SECRET replace it, and
WEBHOOK_AUTH=off opens it explicitly), and the key that signs the admin session cookie (SECRET_KEY).
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import redis

from config import Settings
from gateways.shared_secret import SharedSecretVerifier
from redis_keys import RedisKeys
from redis_link import RedisLink

log = logging.getLogger(__name__)

TOKEN_FILE_NAME = ".webhook_token"
SECRET_KEY_FILE_NAME = ".secret_key"


@dataclass(frozen=True, slots=True)
class WebhookSecret:
    """What a webhook request is checked against: a token (configured or generated) and/or a JWT secret. Both
    empty means the webhook is open (WEBHOOK_AUTH=off)."""

    token: str
    jwt_secret: str
    generated_here: bool = False  # this process created the token (so it tells the owner)
    source: str = ""  # where a generated token is kept, for the start-up message

    @property
    def is_open(self) -> bool:
        return not self.token and not self.jwt_secret

    def verifier(self) -> SharedSecretVerifier:
        """The check the Evolution and Mega adapters run on each of their webhook requests."""
        return SharedSecretVerifier(token=self.token, jwt_secret=self.jwt_secret, is_open=self.is_open)


def kept_file(settings: Settings, name: str) -> Path:
    """Beside the `.env` that was read, else in the working directory."""
    folder = Path(settings.env_file).parent if settings.env_file else Path.cwd()
    return folder / name


def kept_secret(link: RedisLink, key: str, path: Path) -> tuple[str, bool]:
    """(the secret kept under `key` in Redis and in `path`, True when this process just created it)."""
    kept = _read(path)
    fresh = secrets.token_urlsafe(24)

    def from_redis(client: redis.Redis) -> str:
        # SET NX: whichever process or host starts first decides; the others read what it chose.
        client.set(key, kept or fresh, nx=True)
        return str(client.get(key) or kept or fresh)

    value = link.run(from_redis, lambda: kept or _create(path, fresh))
    if value != kept:
        _write(path, value)
    return value, value == fresh


def webhook_secret(settings: Settings, link: RedisLink, keys: RedisKeys) -> WebhookSecret:
    """The configured secret, or the generated one (created now if this is the first start)."""
    if settings.webhook_token or settings.webhook_jwt_secret or not settings.webhook_auth:
        return WebhookSecret(settings.webhook_token, settings.webhook_jwt_secret)
    path = kept_file(settings, TOKEN_FILE_NAME)
    token, generated = kept_secret(link, keys.webhook_token(), path)
    return WebhookSecret(token, "", generated_here=generated, source=f"Redis key {keys.webhook_token()} and {path}")


def session_key(settings: Settings, link: RedisLink, keys: RedisKeys) -> str:
    """SECRET_KEY, or the one generated at the first start: every process must sign sessions alike."""
    if settings.secret_key:
        return settings.secret_key
    return kept_secret(link, keys.secret_key(), kept_file(settings, SECRET_KEY_FILE_NAME))[0]


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return ""


def _create(path: Path, fresh: str) -> str:
    """Without Redis: the first process to create the file decides (O_EXCL), the others read it."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read(path) or fresh
    except OSError as exc:
        log.warning("cannot keep the webhook token in %s (%s): it changes at the next start", path, exc)
        return fresh
    with os.fdopen(descriptor, "w", encoding="utf-8") as out:
        out.write(fresh + "\n")
    return fresh


def _write(path: Path, token: str) -> None:
    try:
        path.write_text(token + "\n", encoding="utf-8")
        path.chmod(0o600)
    except OSError as exc:
        log.warning("cannot keep the webhook token in %s (%s)", path, exc)


def announce(secret: WebhookSecret, settings: Settings) -> None:
    """Tell the owner how to point the gateway at the webhook. The generated token itself is logged once, by the
    process that created it (the owner needs it to configure Evolution or Mega); later starts say where it is."""
    if secret.is_open:
        log.warning("WEBHOOK_AUTH=off: /webhook and /webhook/mega accept unauthenticated posts from anyone")
        return
    if settings.webhook_token or settings.webhook_jwt_secret:
        return
    if not secret.generated_here:
        log.info("webhooks need the generated token kept in %s (or set WEBHOOK_TOKEN)", secret.source)
        return
    host = "localhost" if settings.host in ("0.0.0.0", "::", "") else settings.host
    base = f"http://{host}:{settings.port}"
    log.warning(
        "webhook closed by default: no WEBHOOK_TOKEN was set, so one was generated and kept in %s. Point Evolution "
        "at %s/webhook with the header 'Authorization: Bearer %s' (or the URL %s/webhook?token=%s), and Mega at "
        "%s/webhook/mega?token=%s (use your server's public address). Set WEBHOOK_TOKEN to choose your own.",
        secret.source,
        base,
        secret.token,
        base,
        secret.token,
        base,
        secret.token,
    )
