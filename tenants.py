"""Several businesses in one deployment (TENANTS_FILE): which tenant a chat belongs to, and that tenant's settings.

The file is TOML, one table per tenant, `[tenants.<id>]`: its `name`, the gateway identities that route to it
(`evolution_instances`, `meta_phone_number_ids`, `twilio_numbers`, `mega_instances`) and, under the names of the
environment variables, the settings it sets for itself (TENANT_SETTINGS); anything else comes from the environment.
An identity claimed by two tenants is an error. The file is read again when it changes (looked at every
TENANTS_RELOAD_SECONDS, in every process); an edit that does not parse keeps the last good tenants and says why.

Without TENANTS_FILE there is one tenant, `default`, with the environment's settings, that claims every identity:
the single-business deployment, unchanged. `Runtimes` keeps, per tenant, the pieces of the reply path built from its
settings (the model client with its persona and knowledge, the reply rules, the gateways with its credentials),
built at its first reply and rebuilt when its settings change.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from config import ENV_VARIABLES, SYSTEM_PROMPT_FILE, Settings
from errors import ConfigError
from models import DEFAULT_TENANT, ChatRef

log = logging.getLogger(__name__)

TENANT_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")

# The identity lists of a tenant's table -> the gateway whose ChatRef.instance they name.
IDENTITY_LISTS = {
    "evolution_instances": "evolution",
    "meta_phone_number_ids": "meta",
    "twilio_numbers": "twilio",
    "mega_instances": "mega",
}

# What a tenant may set for itself: what its customers see and hear (persona, knowledge, hours and texts), how long
# it waits for a burst, which model answers it and on whose key, the credentials its replies are sent with, and those
# its webhooks are signed with (its Twilio sub-account, its Meta app). Everything else (Redis, the database, limits of
# the deployment) is the deployment's.
TENANT_SETTINGS = frozenset(
    {
        "SYSTEM_PROMPT",
        SYSTEM_PROMPT_FILE,
        "BUSINESS_NAME",
        "KNOWLEDGE_DIR",
        "RAG_TOP_K",
        "RAG_WHOLE_MAX_CHARS",
        "BUSINESS_HOURS",
        "TIMEZONE",
        "HOLIDAYS",
        "BOT_HOURS",
        "OUT_OF_HOURS_REPLY",
        "HANDOFF_KEYWORDS",
        "HANDOFF_REPLY",
        "HANDOFF_CLOSED_REPLY",
        "HANDOFF_PAUSE_MINUTES",
        "BOT_PAUSE_KEYWORD",
        "BOT_RESUME_KEYWORD",
        "BOT_CLOSE_KEYWORD",
        "CONVERSATION_IDLE_MINUTES",
        "OPT_OUT_KEYWORDS",
        "OPT_OUT_REPLY",
        "OPT_IN_KEYWORDS",
        "OPT_IN_REPLY",
        "FALLBACK_REPLY",
        "MEDIA_FAILED_NOTICE",
        "SPLIT_MESSAGES",
        "SPLIT_MAX_PARTS",
        "MAX_REPLIES_PER_HOUR",
        "DEBOUNCE_SECONDS",
        "DEBOUNCE_MAX_WAIT_SECONDS",
        "GEMINI_MODEL",
        "GEMINI_API_KEY",
        "AUTHENTICATION_API_KEY",
        "META_ACCESS_TOKEN",
        "MEGA_API_TOKEN",
        "TWILIO_ACCOUNT_SID",
        "TWILIO_AUTH_TOKEN",
        "META_APP_SECRET",
        "META_VERIFY_TOKEN",
        "ADMIN_TOKEN",
    }
)


# The settings a tenant's gateways are built with when it sets any of them (its own Evolution key, Meta token, Twilio
# sub-account...). The webhooks' own secrets (META_APP_SECRET, TWILIO_AUTH_TOKEN) are looked up by the deployment's
# adapters through `TenantDirectory.settings_for`.
CREDENTIALS = (
    "authentication_api_key",
    "meta_access_token",
    "mega_api_token",
    "twilio_account_sid",
    "twilio_auth_token",
)


class TenantsError(ConfigError):
    """TENANTS_FILE cannot be used: every problem found, one per line."""


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str
    settings: Settings
    identities: frozenset[tuple[str, str]]  # (gateway, ChatRef.instance); empty for `default` (it claims all)


def single_tenant(settings: Settings) -> Tenant:
    """The one tenant of a deployment without TENANTS_FILE."""
    return Tenant(id=DEFAULT_TENANT, name=settings.business_name, settings=settings, identities=frozenset())


def parse_tenants(text: str, base: Settings, *, folder: Path) -> dict[str, Tenant]:
    """The tenants of a TENANTS_FILE's text; relative file paths in it are read from `folder`. Raises TenantsError."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TenantsError(f"not valid TOML: {exc}") from None
    tables = data.get("tenants")
    extra = sorted(set(data) - {"tenants"})
    problems = [f"unknown top-level key {key!r} (tenants go under [tenants.<id>])" for key in extra]
    if not isinstance(tables, dict) or not tables:
        raise TenantsError("\n".join([*problems, "no [tenants.<id>] table"]))
    tenants: dict[str, Tenant] = {}
    owners: dict[tuple[str, str], str] = {}
    for tenant_id, table in tables.items():
        where = f"[tenants.{tenant_id}]"
        if not TENANT_ID.fullmatch(tenant_id):
            problems.append(f"{where}: an id is 1-40 lowercase letters, digits, '-' or '_'")
            continue
        if not isinstance(table, dict):
            problems.append(f"{where}: expected a table")
            continue
        found = _tenant(tenant_id, table, base, folder)
        if isinstance(found, list):
            problems += [f"{where}: {problem}" for problem in found]
            continue
        for identity in sorted(found.identities):
            if identity in owners:
                problems.append(
                    f"{identity[0]} {identity[1]!r} is claimed by tenants {owners[identity]} and {tenant_id}"
                )
            owners[identity] = tenant_id
        tenants[tenant_id] = found
    problems += _admin_token_problems(tenants, base)
    if problems:
        raise TenantsError("\n".join(problems))
    return tenants


def _admin_token_problems(tenants: Mapping[str, Tenant], base: Settings) -> list[str]:
    """A tenant's own ADMIN_TOKEN must tell it apart: not the deployment's, not another tenant's."""
    problems, holders = [], {}
    for tenant in tenants.values():
        token = tenant.settings.admin_token
        if token == base.admin_token:
            continue  # inherited (or set to the deployment's): the tenant has no token of its own
        if token in holders:
            problems.append(f"[tenants.{tenant.id}]: ADMIN_TOKEN is the same as tenant {holders[token]}'s")
        holders[token] = tenant.id
    return problems


def _tenant(tenant_id: str, table: dict[str, Any], base: Settings, folder: Path) -> Tenant | list[str]:
    problems: list[str] = []
    identities: set[tuple[str, str]] = set()
    values: dict[str, Any] = {}
    for key, raw in table.items():
        if key == "name":
            continue
        if key in IDENTITY_LISTS:
            names = raw if isinstance(raw, list) else None
            if names is None or not all(isinstance(name, str) and name.strip() for name in names):
                problems.append(f"{key}: expected a list of non-empty strings")
                continue
            gateway = IDENTITY_LISTS[key]
            identities.update((gateway, _instance(gateway, name.strip())) for name in names)
            continue
        if key not in TENANT_SETTINGS:
            why = "not a setting" if key not in ENV_VARIABLES and key != SYSTEM_PROMPT_FILE else "not set per tenant"
            problems.append(f"{key}: {why} (see TENANT_SETTINGS in README's 'Several businesses')")
            continue
        if isinstance(raw, list | dict):
            problems.append(f"{key}: expected a string, a number or true/false")
            continue
        text = ("true" if raw else "false") if isinstance(raw, bool) else str(raw)
        if key == SYSTEM_PROMPT_FILE:
            try:
                values["system_prompt"] = (folder / text).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                problems.append(f"{key}: cannot read {text!r} ({exc.__class__.__name__})")
            continue
        attr, convert = ENV_VARIABLES[key]
        try:
            values[attr] = convert(text)
        except ValueError as exc:
            problems.append(f"{key}: {exc}")
    if "knowledge_dir" in values and values["knowledge_dir"]:
        values["knowledge_dir"] = str(folder / values["knowledge_dir"])
    name = table.get("name", tenant_id)
    if not isinstance(name, str) or not name.strip():
        problems.append("name: expected a non-empty string")
    if not identities:
        problems.append(
            "claims no identity (evolution_instances, meta_phone_number_ids, twilio_numbers, mega_instances)"
        )
    if problems:
        return problems
    settings = dataclasses.replace(base, **values)
    return Tenant(id=tenant_id, name=str(name).strip(), settings=settings, identities=frozenset(identities))


def _instance(gateway: str, name: str) -> str:
    """A listed identity as the gateway's parser names the instance (Twilio's is the `whatsapp:` address)."""
    if gateway == "twilio" and not name.startswith("whatsapp:"):
        return f"whatsapp:{name}"
    return name


class TenantDirectory:
    """Which tenant claims a chat, from TENANTS_FILE (reloaded when it changes) or the single default tenant."""

    def __init__(
        self,
        base: Settings,
        *,
        path: str = "",
        reload_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base = base
        self.path = Path(path) if path else None
        self.reload_seconds = reload_seconds
        self.clock = clock
        self.error = ""  # why the file's current content is not in use ("" when it is)
        self._lock = threading.Lock()
        self._next_check = 0.0
        self._seen: tuple[float, int] | None = None  # (mtime, size) of the content last read
        self._tenants: dict[str, Tenant] = {}
        self._by_identity: dict[tuple[str, str], Tenant] = {}
        self._default = single_tenant(base)
        self._watching_in = 0  # the pid whose thread looks at the file (a forked process starts its own)
        if self.path is not None:
            self._load(initial=True)

    @property
    def multi(self) -> bool:
        return self.path is not None

    def claimant(self, chat: ChatRef) -> Tenant | None:
        """The tenant that claims the chat's gateway identity now; None when TENANTS_FILE is set and none does."""
        return self._claiming(chat.gateway, chat.instance)

    def _claiming(self, gateway: str, instance: str) -> Tenant | None:
        if self.path is None or gateway == "simulator":  # the owner's simulator speaks with the environment's
            return self._default
        self._maybe_reload()
        return self._by_identity.get((gateway, instance))

    def for_chat(self, chat: ChatRef) -> Tenant | None:
        """The chat's own tenant (`chat.tenant`) while it still claims the chat's identity. None for a chat buffered
        for a tenant an edit removed, or whose number the edit gave to another: never answered with the settings
        (or the credentials) of a business its customer did not write to."""
        tenant = self.claimant(chat)
        return tenant if tenant is not None and tenant.id == chat.tenant else None

    def claim(self, chat: ChatRef) -> ChatRef | None:
        """The chat as a parser or a URL names it, with the tenant that claims its identity; None when none does."""
        tenant = self.claimant(chat)
        if tenant is None:
            return None
        return chat if chat.tenant == tenant.id else dataclasses.replace(chat, tenant=tenant.id)

    def settings_for(self, gateway: str, instance: str) -> Settings | None:
        """The settings of the tenant that claims this gateway identity (a Twilio number as `whatsapp:+...`, a Meta
        phone number id); None when none does. What a gateway's webhook checks a request with (`Businesses`)."""
        tenant = self._claiming(gateway, instance)
        return tenant.settings if tenant is not None else None

    def every_settings(self) -> list[Settings]:
        """The environment's settings, then every tenant's."""
        return [self.base, *(tenant.settings for tenant in self.all())]

    def all(self) -> list[Tenant]:
        self._maybe_reload()
        return [self._default] if self.path is None else list(self._tenants.values())

    def health(self) -> dict[str, Any]:
        """/health's `tenants`: how many, and why the file's last edit is not in use (None when it is)."""
        tenants = self.all()
        return {"count": len(tenants), "error": self.error or None}

    def watch(self) -> None:
        """Look at the file every `reload_seconds` in this process, so that even a process that serves nothing
        meanwhile takes every good edit (it would otherwise go from the tenants before it straight to a broken one).
        Started when the service is wired, and again by the first lookup in a process forked after that (threads do
        not survive a fork: gunicorn's preload)."""
        if self.path is None or self._watching_in == os.getpid():
            return
        self._watching_in = os.getpid()

        def loop() -> None:
            while True:
                time.sleep(self.reload_seconds)
                try:
                    self._maybe_reload()
                except Exception:  # the watcher must outlive anything; the next lookup tries again
                    log.exception("TENANTS_FILE check failed")

        threading.Thread(target=loop, name="tenants-file", daemon=True).start()

    def _maybe_reload(self) -> None:
        if self.path is None:
            return
        self.watch()
        now = self.clock()
        if now < self._next_check:
            return
        with self._lock:
            if now < self._next_check:
                return
            self._next_check = now + self.reload_seconds
            self._load(initial=False)

    def _load(self, *, initial: bool) -> None:
        assert self.path is not None
        try:
            stat = os.stat(self.path)
            seen = (stat.st_mtime, stat.st_size)
            if seen == self._seen:
                return
            tenants = parse_tenants(self.path.read_text(encoding="utf-8"), self.base, folder=self.path.parent)
        except (OSError, UnicodeDecodeError, TenantsError) as exc:
            reason = str(exc) if isinstance(exc, TenantsError) else f"cannot read it ({exc.__class__.__name__})"
            if initial:
                raise TenantsError(f"TENANTS_FILE {self.path}: {reason}") from None
            if reason != self.error:
                log.error(
                    "TENANTS_FILE %s: edit not used, keeping the %d tenants before it: %s",
                    self.path,
                    len(self._tenants),
                    reason.replace("\n", "; "),
                )
            self.error = reason
            return
        self._seen = seen
        self._tenants = tenants
        self._by_identity = {identity: tenant for tenant in tenants.values() for identity in tenant.identities}
        if self.error or not initial:
            log.warning("TENANTS_FILE %s read: %d tenants (%s)", self.path, len(tenants), ", ".join(tenants))
        self.error = ""


R = TypeVar("R")


class Runtimes(Generic[R]):
    """Per tenant, what `build(tenant)` makes of its settings, built on first use and again when they change."""

    def __init__(
        self, directory: TenantDirectory, build: Callable[[Tenant], R], retire: Callable[[R], None] | None = None
    ) -> None:
        self.directory = directory
        self.build = build
        self.retire = retire  # given what a tenant's changed settings replaced (its knowledge leaves the cache)
        self._built: dict[str, tuple[Tenant, R]] = {}
        self._lock = threading.Lock()

    def for_chat(self, chat: ChatRef) -> R | None:
        tenant = self.directory.for_chat(chat)
        return None if tenant is None else self.for_tenant(tenant)

    def for_id(self, tenant_id: str) -> R | None:
        """What the tenant with this id replies with (the admin's view of it); None for an id no tenant has."""
        tenant = next((t for t in self.directory.all() if t.id == tenant_id), None)
        return None if tenant is None else self.for_tenant(tenant)

    def for_tenant(self, tenant: Tenant) -> R:
        kept = self._built.get(tenant.id)
        if kept is not None and kept[0] is tenant:
            return kept[1]
        with self._lock:
            kept = self._built.get(tenant.id)
            if kept is not None and kept[0].settings == tenant.settings:
                if kept[0] is not tenant:
                    self._built[tenant.id] = (tenant, kept[1])
                return kept[1]
            made = self.build(tenant)
            self._built[tenant.id] = (tenant, made)
        if kept is not None and self.retire is not None:
            self.retire(kept[1])
        return made
