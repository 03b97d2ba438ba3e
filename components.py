"""The pipeline's parts wired together once per process: Redis, buffer, history, conversations, the webhook secret,
gateways, knowledge, the archive and the worker. The web layer (web/) and the worker both take what they need from
`Components`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ai_service import AIService, ProviderPool
from archive import Archive, build_archive
from buffer import Buffer
from config import Settings
from conversation import Commands, Conversations, Params
from counters import Counters
from gateways import build_gateways
from gateways.base import Gateway
from gateways.simulator import SimulatorGateway
from knowledge import KnowledgeBase, KnowledgeCache, ReloadSignal, Watcher
from liveness import Liveness
from memory import History
from metrics import Metrics
from notify import HandoffNotifier
from pacing import PaceLimits, Pacer
from redis_keys import RedisKeys
from redis_link import RedisLink
from reply_policy import Rules
from simulator import Transcript
from tenants import CREDENTIALS, Runtimes, Tenant, TenantDirectory
from usage import Prices, UsageLedger
from webhook_token import WebhookSecret, webhook_secret
from worker import ReplySetup, Worker, media_loader


@dataclass(frozen=True, slots=True, kw_only=True)
class Components:
    """The pipeline's parts, wired once per process."""

    settings: Settings
    link: RedisLink
    keys: RedisKeys
    buffer: Buffer
    history: History
    conversations: Conversations
    counters: Counters
    webhook_secret: WebhookSecret  # what Evolution's and Mega's webhooks must carry (their adapters check it)
    gateways: dict[str, Gateway]
    worker: Worker
    knowledge: KnowledgeBase
    watcher: Watcher
    transcript: Transcript  # the WhatsApp simulator's chats (simulator.py)
    archive: Archive  # PostgreSQL archive (off without DATABASE_URL)
    usage: UsageLedger  # tokens and cost per chat and per day
    metrics: Metrics  # Prometheus metrics of this host's processes (metrics.py)
    liveness: Liveness  # workers' heartbeats
    tenants: TenantDirectory  # which business a chat belongs to (TENANTS_FILE), and its settings
    knowledge_cache: KnowledgeCache  # the tenants' knowledge bases in this process, within KNOWLEDGE_CACHE_MB
    setups: Runtimes[ReplySetup] | None  # each tenant's reply setup (TENANTS_FILE); None with one tenant

    def knowledge_of(self, tenant_id: str) -> KnowledgeBase | None:
        """The knowledge base a tenant's replies use (its setup's, built now if no reply built it yet), so that the
        admin sees what the replies get; None for an id no tenant has."""
        setup = self.setups.for_id(tenant_id) if self.setups is not None else None
        return setup.ai.knowledge if setup is not None else None


def build_components(
    settings: Settings, *, gateways: dict[str, Gateway] | None = None, clock: Callable[[], float] = time.time
) -> Components:
    """Wire Redis, buffer, history, the webhook secret, gateways and the worker from `settings` (tests may pass
    their own gateways and clock). The webhook secret is the configured one, or the one generated and kept at the
    first start (webhook_token.py); the adapters of gateways that sign nothing check it."""
    link = RedisLink.for_settings(settings)
    keys = RedisKeys(settings.redis_prefix, shards=settings.due_shards if settings.redis_cluster else 1)
    buffer = Buffer(
        link,
        keys,
        debounce_seconds=settings.debounce_seconds,
        max_wait_seconds=settings.debounce_max_wait_seconds,
        dedup_ttl_seconds=settings.dedup_ttl_seconds,
        lease_seconds=settings.lease_seconds,
        media_max_bytes=settings.media_max_bytes,
        history_turns=settings.history_max_turns,
    )
    history = History(link, keys, max_turns=settings.history_max_turns, ttl_seconds=settings.history_ttl_seconds)
    tenants = TenantDirectory(settings, path=settings.tenants_file, reload_seconds=settings.tenants_reload_seconds)
    tenants.watch()
    # Each business's debounce, idle time and business-side commands (TENANTS_FILE), built at its first use.
    tunings = Runtimes(
        tenants, lambda tenant: (Params.from_settings(tenant.settings), Commands.from_settings(tenant.settings))
    )
    conversations = Conversations(
        link,
        keys,
        buffer,
        params=Params.from_settings(settings),
        commands=Commands.from_settings(settings),
        tuned=tunings.for_chat if tenants.multi else None,
    )
    metrics = Metrics(enabled=settings.metrics_enabled)
    counters = Counters(metrics)
    liveness = Liveness(link, keys)
    archive = build_archive(settings, link, keys, counters)
    usage = UsageLedger(link, keys, Prices.from_settings(settings.model_prices))
    secret = webhook_secret(settings, link, keys)
    if gateways is None:
        gateways = build_gateways(
            settings, shared_secret=secret.verifier(), businesses=tenants if tenants.multi else None
        )
    transcript = Transcript(link, keys)
    if settings.simulator_enabled:
        gateways["simulator"] = SimulatorGateway(transcript)
    knowledge_cache = KnowledgeCache(int(settings.knowledge_cache_mb * 1024 * 1024))
    knowledge = KnowledgeBase(
        settings.knowledge_dir, top_k=settings.rag_top_k, whole_max_chars=settings.rag_whole_max_chars
    )
    knowledge.reload()
    watcher = Watcher(
        knowledge,
        interval_seconds=settings.rag_watch_interval,
        watch_files=settings.rag_auto_reload,
        signal=ReloadSignal(link, keys.knowledge_generation()) if link.enabled else None,
        cache=knowledge_cache,
    )
    pool = ProviderPool()  # tenants on the same model and key share one client

    def setup_of(tenant: Tenant) -> ReplySetup:
        """A tenant's reply setup: its persona, knowledge and model; its rules; its gateway credentials."""
        own = tenant.settings
        tenant_knowledge = KnowledgeBase(  # read at its first reply, within KNOWLEDGE_CACHE_MB
            own.knowledge_dir, top_k=own.rag_top_k, whole_max_chars=own.rag_whole_max_chars, cache=knowledge_cache
        )
        tenant_gateways = gateways
        if any(getattr(own, attr) != getattr(settings, attr) for attr in CREDENTIALS):
            tenant_gateways = {**gateways, **build_gateways(own, shared_secret=secret.verifier())}
        return ReplySetup(
            settings=own,
            rules=Rules.from_settings(own),
            ai=AIService(own, tenant_knowledge, counters=counters, metrics=metrics, providers=pool.providers(own)),
            gateways=tenant_gateways,
            media=media_loader(own, tenant_gateways, counters),
        )

    def retire(setup: ReplySetup) -> None:
        if setup.ai.knowledge is not None:
            knowledge_cache.forget(setup.ai.knowledge)

    setups = Runtimes(tenants, setup_of, retire) if tenants.multi else None
    worker = Worker(
        settings,
        buffer=buffer,
        history=history,
        conversations=conversations,
        ai=AIService(settings, knowledge, counters=counters, metrics=metrics),
        gateways=gateways,
        counters=counters,
        notifier=HandoffNotifier(settings.handoff_notify_url, counters),
        journal=archive.journal,
        usage=usage,
        metrics=metrics,
        liveness=liveness,
        pacer=Pacer(link, keys, PaceLimits.from_settings(settings)),
        setups=setups.for_chat if setups is not None else None,
        clock=clock,
    )
    if archive.writer is not None:
        archive.writer.busy = worker.busy  # replies first, the archive just after
    return Components(
        settings=settings,
        link=link,
        keys=keys,
        buffer=buffer,
        history=history,
        conversations=conversations,
        counters=counters,
        webhook_secret=secret,
        gateways=gateways,
        worker=worker,
        knowledge=knowledge,
        watcher=watcher,
        transcript=transcript,
        archive=archive,
        usage=usage,
        metrics=metrics,
        liveness=liveness,
        tenants=tenants,
        knowledge_cache=knowledge_cache,
        setups=setups,
    )
