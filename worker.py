"""The background worker: claim due chats -> decide who answers (reply_policy) -> the burst, media loaded (media.py)
-> prompt -> reply (ai_service: the provider chain) -> send -> history -> ack, handing what happened to the archive's
journal and the metrics on the way. Handles no HTTP itself: read receipts, media downloads, sends and "did this
part go out?" go through the chat's gateway (`gateways.base.Gateway`).

It runs as a daemon thread in each serving process (WORKER_ENABLED=true), or alone as `python worker.py` (`main`,
with the archive writer and the knowledge watcher, no HTTP server). Each claimed chat is processed on a small
thread pool so replies go out concurrently. Claims are leased: the loop renews the leases of the chats it is working
on, so a chat returns to the queue only when its process died or hung; a heartbeat says the worker is alive.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from dataclasses import dataclass, field
from typing import Any

from ai_service import AIService
from archive.events import (
    DECISION_KINDS,
    Event,
    dead_letter_event,
    decision_event,
    message_events,
    reply_part_event,
    usage_data,
)
from archive.journal import Journal
from buffer import NOT_SENDING, Also, Buffer, Claim, burst_deadline, hooks, is_human_record, profile_name
from config import Settings
from conversation import Changes, Conversations, stamp, text_hash
from counters import Counters
from errors import AIServiceError, SendError
from gateways.base import Gateway
from liveness import Liveness, worker_id
from logs import burst_id, log_context
from media import Burst, MediaLimits, MediaLoader, parts_of_records, user_record
from memory import History, Turn
from metrics import Metrics
from models import ChatRef
from notify import HandoffNotifier
from pacing import Pacer
from prompt import Generated
from reply_parts import reply_parts, split_text
from reply_policy import NONE, TEXT, Decision, Rules, dated, decide, now_note
from usage import UsageLedger

log = logging.getLogger(__name__)

MAX_RETRY_DELAY_SECONDS = 600.0
MAX_IDLE_BACKOFF_SECONDS = 5.0
# A gateway's "too many messages": the part is sent again after the number (or the customer's conversation) slowed
# down this long, when the gateway did not say (Meta's pair limit is about one message every 6 s to a user).
RATE_LIMIT_RESENDS = 5
DEFAULT_SLOWDOWN_SECONDS = {"number": 2.0, "customer": 6.0}
MAX_SLOWDOWN_SECONDS = 30.0  # a longer Retry-After is capped: the lease is held (and renewed) while waiting
DEFAULT_MAX_TEXT_CHARS = 4096  # WhatsApp's own limit, for a chat whose gateway is not configured (never sent)
# The fence's verdicts (Worker._fence).
LOST, STALE, WITHHELD, SEND = "lost", "stale", "withheld", "send"


@dataclass(frozen=True, slots=True)
class ReplySetup:
    """What a reply uses of its tenant's settings (tenants.py): one per tenant, the same for all its chats."""

    settings: Settings
    rules: Rules
    ai: AIService
    gateways: Mapping[str, Gateway]
    media: MediaLoader


def media_loader(settings: Settings, gateways: Mapping[str, Gateway], counters: Counters) -> MediaLoader:
    return MediaLoader(
        MediaLimits(
            max_bytes=settings.media_max_bytes,
            max_burst_bytes=settings.media_max_burst_bytes,
            allowed_types=settings.media_allowed_types,
        ),
        gateways=gateways,
        counters=counters,
        notice_template=settings.media_failed_notice,
    )


class Worker:
    """Drains the buffer. `run_once()` is one claim round; `start()` runs it in a loop on a thread."""

    def __init__(
        self,
        settings: Settings,
        *,
        buffer: Buffer,
        history: History,
        conversations: Conversations,
        ai: AIService,
        gateways: Mapping[str, Gateway],
        counters: Counters,
        notifier: HandoffNotifier | None = None,
        journal: Journal | None = None,
        usage: UsageLedger | None = None,
        metrics: Metrics | None = None,
        liveness: Liveness | None = None,
        pacer: Pacer | None = None,
        setups: Callable[[ChatRef], ReplySetup | None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.pacer = pacer  # outbound pacing per sending number and customer (pacing.py); None = not paced
        self.journal = journal  # the archive's (archive/journal.py); None or off = nothing archived
        self.usage = usage  # tokens and cost per chat and per day (usage.py); None = not summed
        self.metrics = metrics or Metrics(enabled=False)
        self.liveness = liveness  # heartbeats, so /health can tell how many workers are alive
        self.id = worker_id()
        self.buffer = buffer
        self.history = history
        self.conversations = conversations
        self.rules = Rules.from_settings(settings)
        self.notifier = notifier or HandoffNotifier(settings.handoff_notify_url, counters)
        self.ai = ai
        self.gateways = gateways
        self.counters = counters
        self.clock = clock
        self.media = media_loader(settings, gateways, counters)
        # The chat's tenant's setup (TENANTS_FILE); without tenants, the one built from `settings` here. None: no
        # tenant claims the chat any more (its identity left the file after the message was buffered).
        self._single = ReplySetup(settings, self.rules, ai, gateways, self.media)
        self.setup_for: Callable[[ChatRef], ReplySetup | None] = setups or (lambda chat: self._single)
        self._stop = threading.Event()
        self._slot_free = threading.Event()  # set when a reply finishes or on stop
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._in_flight: dict[str, Claim] = {}  # token -> claim, for lease renewal
        self._futures: set[Future[None]] = set()  # replies running on the pool, waited for by stop()
        self._in_flight_lock = threading.Lock()
        self._last_heartbeat = 0.0
        self.last_loop_at = 0.0

    # ----- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        if self.is_alive():
            return
        self._stop.clear()
        if self.liveness is not None:  # counted from the start, before the loop's first round
            self.liveness.beat(self.id, force=True)
        self._pool = ThreadPoolExecutor(self.settings.worker_concurrency, thread_name_prefix="reply")
        self._thread = threading.Thread(target=self.run_forever, name="buffer-worker", daemon=True)
        self._thread.start()
        log.info("worker started concurrency=%d", self.settings.worker_concurrency)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming, let running replies finish for up to `timeout` seconds. Unfinished batches
        keep their lease and are claimed again by another process once it expires."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        self._slot_free.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._pool is not None:
            # Queued jobs are dropped (their leases expire); the ones already running are waited for.
            self._pool.shutdown(wait=False, cancel_futures=True)
            with self._in_flight_lock:
                running = list(self._futures)
            _, not_done = wait_for_futures(running, timeout=max(0.0, deadline - time.monotonic()))
            if not_done:
                log.warning(
                    "stopped with %d replies still running; their chats return when the lease expires", len(not_done)
                )
        with self._in_flight_lock:
            # Cancelled jobs never reach their `finally`; their leases simply expire.
            self._in_flight.clear()
            self._futures.clear()

    def _forget_future(self, future: Future[None]) -> None:
        with self._in_flight_lock:
            self._futures.discard(future)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def busy(self) -> bool:
        """Replies are being written or sent by this process now."""
        return bool(self._in_flight)

    def run_forever(self) -> None:
        failures = 0
        min_free = 1
        try:
            while not self._stop.is_set():
                claimed = 0
                try:
                    if self.liveness is not None:
                        self.liveness.beat(self.id)
                    claimed = self.run_once(min_free=min_free)
                    self.renew_leases()
                    failures = 0
                except Exception:  # the loop must survive anything; one bad round is logged and retried
                    failures += 1
                    log.exception("worker round failed (%d in a row)", failures)
                self.last_loop_at = time.time()
                if not claimed:
                    pause = min(self.settings.worker_poll_seconds * (2 ** min(failures, 5)), MAX_IDLE_BACKOFF_SECONDS)
                    # A saturated pool wakes up as soon as one reply finishes, not a whole poll later; but it claims
                    # again only once a quarter of it is free (or a poll passed without a reply finishing): in a
                    # drain, claiming for one slot at a time cost a Redis round trip per reply.
                    woken_by_a_reply = self._slot_free.wait(pause)
                    self._slot_free.clear()
                    min_free = self.refill_at if woken_by_a_reply else 1
        finally:
            if self.liveness is not None:
                self.liveness.leave(self.id)
            log.info("worker stopped")

    # ----- one round -------------------------------------------------------------------------------

    @property
    def refill_at(self) -> int:
        """Free slots worth a claim while replies are running: a quarter of WORKER_CONCURRENCY."""
        return max(1, self.settings.worker_concurrency // 4)

    def run_once(self, *, wait: bool = False, min_free: int = 1) -> int:
        """Claim the chats that are due (when at least `min_free` slots are free) and start answering them; returns
        how many were claimed.

        With `wait=True` (tests, benchmarks) the claims are processed here, one after another.
        """
        with self._in_flight_lock:
            free = self.settings.worker_concurrency - len(self._in_flight)
        if free < max(1, min_free):
            return 0
        claims = self.buffer.claim_due(now=self.clock(), limit=free)
        for claim in claims:
            with self._in_flight_lock:
                self._in_flight[claim.token] = claim
            if wait or self._pool is None:
                self._process_guarded(claim)
            else:
                future = self._pool.submit(self._process_guarded, claim)
                with self._in_flight_lock:
                    self._futures.add(future)
                future.add_done_callback(self._forget_future)
        return len(claims)

    def renew_leases(self) -> None:
        """Extend the leases of chats still being answered, every third of a lease."""
        now = self.clock()
        if now - self._last_heartbeat < self.settings.lease_seconds / 3:
            return
        self._last_heartbeat = now
        with self._in_flight_lock:
            claims = list(self._in_flight.values())
        for claim in claims:
            if self.buffer.renew(claim, now=now):
                continue
            with self._in_flight_lock:
                finished = claim.token not in self._in_flight  # acked since the copy above: nothing was lost
            if not finished:
                log.warning("lease lost chat=%s: another worker took it over", claim.chat.label)

    def _process_guarded(self, claim: Claim) -> None:
        self.metrics.in_flight(+1)
        first_id = str(claim.messages[0].get("id") or "") if claim.messages else ""
        try:
            with log_context(burst_id(claim.chat.key, first_id), claim.chat.label, claim.chat.tenant):
                self.process(claim)
        except Exception:  # one chat's failure must not stop the others; its lease brings it back
            self.counters.add("worker_errors")
            log.exception("answering chat=%s failed; it will be retried when its lease expires", claim.chat.label)
        finally:
            with self._in_flight_lock:
                self._in_flight.pop(claim.token, None)
            self.metrics.in_flight(-1)
            self._slot_free.set()

    # ----- one chat --------------------------------------------------------------------------------

    def process(self, claim: Claim) -> None:
        """Answer one claimed burst: decide who answers it (reply_policy), write the reply (a fixed text, or the
        media and Gemini), fence, send, remember, ack. A reply stored by an earlier attempt is sent as is."""
        chat = claim.chat
        if not claim.messages:
            self.buffer.ack(claim)
            return
        setup = self.setup_for(chat)
        if setup is None:
            self.counters.add("no_tenant")
            log.error(
                "chat=%s: its tenant (%s) no longer claims its identity in TENANTS_FILE; kept as a dead letter",
                chat.label,
                chat.tenant,
            )
            self.buffer.dead_letter(claim, reason="its tenant no longer claims this identity", now=self.clock())
            return
        if claim.reply:
            plan = Plan.from_json(claim.plan)
            turns = self._stored_turns(claim)
            parts = self._parts(chat, claim.reply)
            start = self._first_unsent(claim, parts)
            verdict = self._fence(claim, plan, parts, start, keep={"sent": start})
            if verdict != LOST:
                self._deliver(claim, claim.reply, turns, plan, parts, start, verdict)
            return
        read_with_claim = (claim.conversation, claim.opted_out) if claim.conversation is not None else None
        status = self.conversations.status(chat, read=read_with_claim)
        decision = decide(claim.messages, status, setup.rules, now=self.clock())
        self._note(claim, decision)
        if decision.action == NONE:
            self._settle_without_reply(claim, decision)
            return
        composed = self._compose(claim, decision)
        if composed is None:
            return
        reply, turns, transcripts, usage, fence_hook = composed
        # Archived with the fence that stores the reply (one round trip): a new owner after a crash sends the stored
        # reply without asking the model again, so this is where the transcripts are known (an event emitted twice
        # is written once).
        archived = self._burst_events(claim, decision, transcripts)
        plan = Plan(
            changes=decision.changes,
            decided_with=status.business_at,
            reply_to=_last_id(decision),
            written_at=self.clock(),
            usage=usage,
        )
        parts = self._parts(chat, reply)
        # The fence stores the reply, its history turns and its plan with the batch (and the first part as the one
        # about to go out), for a new owner after a crash.
        verdict = self._fence(
            claim,
            plan,
            parts,
            0,
            also=hooks(self._also(claim, archived), fence_hook),
            keep={"reply": reply, "turns": encode_turns(turns), "plan": json.dumps(plan.to_json())},
        )
        if verdict == LOST:
            return
        self._forget_media(claim)
        self._deliver(claim, reply, turns, plan, parts, 0, verdict)

    def _fence(
        self,
        claim: Claim,
        plan: Plan,
        parts: list[str],
        start: int,
        *,
        keep: dict[str, Any],
        also: Also | None = None,
    ) -> str:
        """Fence, right before sending: check that the claim still owns its batch (storing `keep` with it: the
        reply, its turns and plan, or how many parts are out) and note the part about to go out; and record the
        decision's changes (settle). Where the batch is on Redis both go in one round trip, the settle guarded by
        the lease. Returns LOST (a new owner answers; nothing recorded), STALE (older than REPLY_MAX_AGE_MINUTES:
        the changes hold, nothing goes out), WITHHELD (a person acted in the chat after the decision) or SEND."""
        chat = claim.chat
        max_age = self.settings.reply_max_age_minutes * 60
        stale = bool(plan.written_at) and self.clock() - plan.written_at > max_age
        settle: dict[str, Any] = {
            "now": self.clock(),
            "sending": None if stale else parts[start:],
            "decided_with": plan.decided_with if start == 0 and not stale else None,
        }
        fenced = (
            self.conversations.settle_in_fence(chat, plan.changes, token=claim.token, **settle)
            if self.buffer.shares_round_trips(claim)
            else None
        )
        owned = self.buffer.renew(
            claim, now=self.clock(), sending=self._mark(parts, start), also=hooks(also, fenced), **keep
        )
        if not owned or (fenced is not None and not fenced.held):
            log.warning("lease lost chat=%s before sending; the new owner answers", chat.label)
            return LOST
        go_ahead = fenced.go_ahead if fenced is not None else self.conversations.settle(chat, plan.changes, **settle)
        if stale:
            return STALE
        return SEND if go_ahead else WITHHELD

    def _note(self, claim: Claim, decision: Decision) -> None:
        """Log (masked) and count every decision; a request for a person is also notified."""
        if decision.skipped:
            self.counters.add("paused_skips")
        counter = DECISION_COUNTERS.get(decision.reason)
        if counter:
            self.counters.add(counter)
        gateway, tenant = claim.chat.gateway, claim.chat.tenant
        self.metrics.burst(gateway, decision.action, len(claim.messages), tenant=tenant)
        if decision.reason == "handoff_request":
            self.metrics.handoff(gateway, "requested", tenant=tenant)
        elif decision.reason == "opt_out":
            self.metrics.opt_out(gateway, tenant=tenant)
        elif decision.reason == "out_of_hours":
            self.metrics.out_of_hours(gateway, tenant=tenant)
        log.info(
            "decision chat=%s action=%s reason=%s answered=%d handled_by_person=%d",
            claim.chat.label,
            decision.action,
            decision.reason,
            len(decision.answered),
            decision.skipped,
        )
        if decision.notify:
            self.notifier.notify(
                claim.chat,
                customer_name=profile_name(decision.answered),
                text="\n".join(str(r.get("text") or "") for r in decision.answered if r.get("text")),
                at=decision.changes.last_at or self.clock(),
            )

    def _settle_without_reply(self, claim: Claim, decision: Decision) -> None:
        """Nobody answers this burst now (a person handles the chat, the customer opted out, the hours): its
        messages go into the history, the conversation records what changed, and the batch is done."""
        self.conversations.settle(claim.chat, decision.changes, now=self.clock())
        self._forget_media(claim)
        turns = [*decision.earlier, *decision.user_turn(self._last_at(decision))]
        self.buffer.ack(
            claim,
            before=self._history_first(claim, turns),
            also=self._also(claim, self._burst_events(claim, decision)),
        )

    def _archive(self, events: list[Event]) -> None:
        """Hand events to the archive's journal (a Redis Stream, or memory while Redis is down); never fails a
        reply."""
        if self.journal is None or not self.journal.enabled:
            return
        try:
            self.journal.emit(events)
        except Exception:  # the archive must never cost a customer their reply
            self.counters.add("archive_emit_failures")
            log.exception("archive: events of chat=%s not recorded", events[0].chat_ref.label if events else "-")

    def _also(self, claim: Claim, events: list[Event]) -> Also | None:
        """A hook that puts `events` into the archive's stream in the same round trip as the buffer call it is given
        to; None when there is nothing to add that way (the archive is off, or the claim is held in this process
        while Redis is down: the journal keeps them then)."""
        if not events or self.journal is None or not self.journal.enabled:
            return None
        if not self.buffer.shares_round_trips(claim):
            self._archive(events)
            return None
        return self.journal.adder(events)

    def _history_first(self, claim: Claim, turns: list[Turn]) -> Also | None:
        """A hook that writes a burst's history turns in the ack's round trip, before the ack (once acked, the chat's
        next burst may be claimed at once and must see them); where the batch is held in this process (Redis was
        down), they are written now and None is returned."""
        if not self.buffer.shares_round_trips(claim):
            self.history.append(claim.chat, turns)
            return None
        return self.history.adder(claim.chat, turns)

    def _burst_events(self, claim: Claim, decision: Decision, transcripts: dict[str, str] | None = None) -> list[Event]:
        """The burst's messages (the customer's and a person's), and the decision when it is one worth keeping."""
        now = self.clock()
        events = message_events(claim.chat, claim.messages, transcripts=transcripts, now=now)
        if decision.reason in DECISION_KINDS:
            about = _last_id(decision) or _last_record_id(claim)
            events.append(decision_event(claim.chat, kind=decision.reason, about=about, at=self._last_at(decision)))
        return events

    def _compose(
        self, claim: Claim, decision: Decision
    ) -> tuple[str, list[Turn], dict[str, str], dict[str, Any] | None, Also | None] | None:
        """(reply, history turns, the model's transcript of each media item by message id, what the model calls
        cost, the hook that adds this reply to the loop guard's count and that cost to the sums in the fence's round
        trip) for the burst; None when it is settled without one (loop guard, or Gemini failed and FALLBACK_REPLY is
        empty)."""
        earlier = list(decision.earlier)
        name = profile_name(decision.answered)
        asked_at = self._last_at(decision)  # the customer's turn is dated when its last message came in
        if decision.action == TEXT:
            return (
                decision.text,
                [*earlier, *decision.user_turn(asked_at), Turn(role="model", text=decision.text, at=self.clock())],
                {},
                None,
                None,
            )
        is_a_loop, count_this_reply = self._loop_guard(claim)
        if is_a_loop:
            self._settle_without_reply(claim, decision)
            return None
        self._mark_read(claim.chat, _last_id(decision))
        setup = self._of(claim.chat)
        burst = setup.media.burst(
            claim.chat, decision.answered, blob_of=lambda message_id: self.buffer.media_blob(claim, message_id)
        )
        generated, burst = self._ask_model(claim, burst, decision)
        if generated is None:
            if not setup.settings.fallback_reply:  # the owner chose silence over an apology
                self._settle_without_reply(claim, decision)
                log.error("no reply sent chat=%s: gemini failed and FALLBACK_REPLY is empty", claim.chat.label)
                return None
            # The fallback is not a model turn: the unanswered burst joins the next prompt instead.
            return (
                setup.settings.fallback_reply,
                [*earlier, Turn(role="user", text=burst.record(), at=asked_at, name=name)],
                {},
                None,
                count_this_reply,
            )
        notice = burst.notice
        reply = f"{generated.reply}\n\n{notice}" if notice else generated.reply
        turns = [
            *earlier,
            Turn(role="user", text=burst.record(generated.transcripts), at=asked_at, name=name),
            Turn(role="model", text=reply, at=self.clock()),
        ]
        usage, record_usage = self._account(claim, generated, conversation=decision.conversation_since)
        transcripts = burst.transcripts_by_id(generated.transcripts)
        return reply, turns, transcripts, usage, hooks(count_this_reply, record_usage)

    def _deliver(
        self, claim: Claim, reply: str, turns: list[Turn], plan: Plan, parts: list[str], start: int, verdict: str
    ) -> None:
        """After the fence's `verdict`, send the parts from `start` on, remember the reply, ack. Not one part goes
        out when a person acted in the chat after the decision (they answer); once the first part is out, the rest
        follows (the parts are one delivery unit)."""
        chat = claim.chat
        if verdict == STALE:
            # Late is worse than never for a chat reply ("Desculpe, instabilidade" an hour later); what the
            # decision changed (an opt-out, say) still holds.
            max_age = self.settings.reply_max_age_minutes
            self.counters.add("stale_replies")
            self._dead_letter(
                claim, f"stale: not delivered within REPLY_MAX_AGE_MINUTES ({max_age:g} min)", reply, parts[start:]
            )
            return
        if verdict == WITHHELD:
            self.counters.add("paused_skips")
            log.info("reply withheld chat=%s: a person acted in the chat while it was being written", chat.label)
            replied = [turn for turn in turns if not (turn.role == "model" and not turn.author)]
            self.buffer.ack(claim, before=self._history_first(claim, replied))
            return
        outcome = self._send(claim, parts, plan, start)
        if outcome is None:
            return
        last_id, last_part = outcome
        # History before ack: once acked, the chat's next burst may be claimed at once and must see this turn.
        if not self.buffer.ack(
            claim, sent_id=last_id, before=self._history_first(claim, turns), also=self._also(claim, last_part)
        ):
            self.counters.add("late_acks")
            log.warning("reply sent but lease had expired chat=%s: it may be answered twice", chat.label)
        self.counters.add("replies_sent")
        log.debug("reply text chat=%s text=%.80r", chat.label, reply)
        log.info(
            "reply sent chat=%s messages=%d parts=%d attempt=%d chars=%d",
            chat.label,
            len(claim.messages),
            len(parts),
            claim.attempts,
            len(reply),
        )

    def _first_unsent(self, claim: Claim, parts: list[str]) -> int:
        """How many parts are out already. When the last owner stopped while sending a part (a crash between the
        gateway taking it and the progress reaching Redis), that part is looked for before it is sent again: among
        the assistant's own echoes received since (Evolution posts one for each message), then at the gateway
        where it can tell (`find_sent`); only a part found nowhere is sent again."""
        sent = claim.sent
        mark = _parse_mark(claim.sending)
        if mark is None or mark[0] != sent or sent >= len(parts) or mark[1] != text_hash(parts[sent]):
            return sent
        chat, part, since = claim.chat, parts[sent], mark[2]
        where = "echo" if self.conversations.echo_seen(chat, part, since=since) else ""
        gateway = self._of(chat).gateways.get(chat.gateway)
        if not where and gateway is not None and gateway.find_sent(chat, part, since=since):
            where = "gateway"
        if where:
            self.counters.add("parts_found_after_crash")
            log.info(
                "part %d of chat=%s went out before the last owner stopped (%s): not sent again",
                sent + 1,
                chat.label,
                where,
            )
            return sent + 1
        self.counters.add("parts_resent_after_crash")
        log.warning(
            "part %d of chat=%s may have gone out before the last owner stopped, but neither an echo nor the "
            "gateway shows it: sending it again",
            sent + 1,
            chat.label,
        )
        return sent

    def _deadline(self, claim: Claim) -> float:
        """When the burst fell due: DEBOUNCE_SECONDS after its last message, at most DEBOUNCE_MAX_WAIT_SECONDS after
        its first (as the buffer computed it from the same times)."""
        times = [float(m.get("at") or 0) for m in claim.messages if m.get("at")]
        if not times:
            return self.clock()
        settings = self._of(claim.chat).settings
        debounce, max_wait = settings.debounce_seconds, settings.debounce_max_wait_seconds
        return burst_deadline(min(times), max(times), debounce=debounce, max_wait=max_wait)

    def _mark(self, parts: list[str], n: int) -> str:
        """The batch's note that part `n` is about to be sent (its text hash, and when), or '' past the end."""
        if n >= len(parts):
            return ""
        return json.dumps({"n": n, "hash": text_hash(parts[n]), "at": round(self.clock(), 3)})

    def _parts(self, chat: ChatRef, reply: str) -> list[str]:
        setup = self._of(chat)
        gateway = setup.gateways.get(chat.gateway)
        limit = gateway.max_text_chars if gateway is not None else DEFAULT_MAX_TEXT_CHARS
        if not setup.settings.split_messages:
            return split_text(reply, limit)
        return reply_parts(reply, max_parts=setup.settings.split_max_parts, limit=limit)

    def _typing_ms(self, chat: ChatRef, part: str) -> int:
        """How long "typing…" shows before a part, when replies are split to feel human."""
        settings = self._of(chat).settings
        if not settings.split_messages:
            return 0
        return min(len(part) * self.settings.typing_ms_per_char, self.settings.typing_max_ms)

    def gateways_for(self, chat: ChatRef) -> Mapping[str, Gateway]:
        """The gateways a message to this chat goes out through: its tenant's credentials (the owner's messages and
        dead-letter retries use them too)."""
        return self._of(chat).gateways

    def _of(self, chat: ChatRef) -> ReplySetup:
        """The chat's setup (`process` has checked that a tenant claims it; should the file change in between, the
        environment's settings finish the reply)."""
        return self.setup_for(chat) or self._single

    def _last_at(self, decision: Decision) -> float:
        return decision.changes.last_at or self.clock()

    def _stored_turns(self, claim: Claim) -> list[Turn]:
        """The history turns stored with an earlier attempt's reply (or, for a reply stored by an older version
        without them, the burst's customer messages in words and the reply)."""
        try:
            return [Turn(**turn) for turn in json.loads(claim.turns)]
        except (ValueError, TypeError):
            now = self.clock()
            customer = [m for m in claim.messages if not is_human_record(m)]
            turns = [
                Turn(role="user", text=user_record(parts_of_records(customer)), at=now, name=profile_name(customer))
            ]
            if claim.reply != self._of(claim.chat).settings.fallback_reply:
                turns.append(Turn(role="model", text=claim.reply, at=now))
            return turns

    def _forget_media(self, claim: Claim) -> None:
        """The reply is stored with the batch, so the media base64 kept for it is not needed again."""
        try:
            self.buffer.drop_media(claim)
        except Exception as exc:  # best effort: the keys expire on their own
            log.info("could not drop media of chat=%s now: %s", claim.chat.label, exc.__class__.__name__)

    def _loop_guard(self, claim: Claim) -> tuple[bool, Also | None]:
        """True when this chat already got MAX_REPLIES_PER_HOUR replies: most likely another bot answering
        every reply of ours. The burst is then kept in the history, logged and counted, not answered. Otherwise
        False, and the hook that counts this reply with the fence (None when it is counted already, or no limit)."""
        limit = self._of(claim.chat).settings.max_replies_per_hour
        if not limit:
            return False, None
        count, count_this_reply = self.buffer.count_reply(claim, now=self.clock())
        if count <= limit:
            return False, count_this_reply
        self.counters.add("loop_guard")
        log.warning("reply limit reached chat=%s (%d/hour): not answering, possible bot loop", claim.chat.label, limit)
        return True, None

    def _mark_read(self, chat: ChatRef, message_id: str) -> None:
        """Read receipt for the customer's last message, where the gateway offers one (best effort)."""
        gateway = self._of(chat).gateways.get(chat.gateway)
        if gateway is not None and message_id:
            gateway.mark_read(chat, message_id)

    def _ask_model(self, claim: Claim, burst: Burst, decision: Decision) -> tuple[Generated | None, Burst]:
        """(The model's reply and media transcripts, or None when every provider keeps failing; the burst it was
        given).

        The history holds the turns this burst puts before the answered messages (a person's, say), and the turns
        of earlier conversations carry their dates. When Gemini refuses a burst's media (400: a corrupt voice
        note, say), it is asked once more with the media as words, so one bad item costs the customer that item,
        not the whole answer.
        """
        # The claim brought the history when it came from Redis (one round trip less per reply).
        recent = self.history.parse(claim.history) if claim.history is not None else self.history.recent(claim.chat)
        setup = self._of(claim.chat)
        history, marked = dated([*recent, *decision.earlier], decision.conversation_since, setup.settings.hours)
        note = now_note(self.clock(), setup.settings.hours) if marked else ""
        try:
            generated = setup.ai.generate(history, list(burst.parts), note=note)
        except AIServiceError as exc:
            if exc.status_code == 400 and burst.has_readable_media:
                self.counters.add("media_refused")
                log.warning(
                    "the model refused the media of chat=%s (%s); asking again without it", claim.chat.label, exc
                )
                return self._ask_model(claim, burst.without_media(), decision)
            self.counters.add("ai_failures")
            self.counters.add("fallbacks")
            log.error("no model answered chat=%s: %s; sending FALLBACK_REPLY", claim.chat.label, exc)
            return None, burst
        return generated, burst

    def _account(
        self, claim: Claim, generated: Generated, *, conversation: float
    ) -> tuple[dict[str, Any] | None, Also | None]:
        """The calls' tokens and cost as the reply's plan keeps them (the archive stores them with its first part),
        or None when the model reported none; and the hook that adds them to the chat's and the day's sums in the
        fence's round trip (where the batch is held in this process, they are added now and the hook is None). The
        sums count a call once the fence ran, whether or not the lease held: the model was paid for either way."""
        if not generated.usage:
            return None, None
        cost, record = 0.0, None
        if self.usage is not None:
            opened = stamp(conversation) if conversation else ""
            calls, now = list(generated.usage), self.clock()
            if self.buffer.shares_round_trips(claim):
                cost, record = self.usage.adder(claim.chat, calls, now=now, conversation=opened)
            else:
                cost = self.usage.record(claim.chat, calls, now=now, conversation=opened)
        return usage_data(generated.usage, cost), record

    def _send_part(self, chat: ChatRef, gateway: Gateway, part: str, typing: dict[str, Any]) -> str:
        """Send one part at its paced moment; when the gateway says the number (or this customer's conversation)
        gets messages too fast, slow that down and send it again at its next moment, up to RATE_LIMIT_RESENDS
        times (then it fails like any transient error: released and retried later). Returns the gateway's id."""
        tenant = chat.tenant
        for resend in range(RATE_LIMIT_RESENDS + 1):
            if self.pacer is not None:
                self.pacer.wait_for_turn(chat, slowed_down=resend > 0)
            began = time.monotonic()
            try:
                message_id = gateway.send_text(chat, part, **typing)
            except SendError as exc:
                self.metrics.send(chat.gateway, ok=False, seconds=time.monotonic() - began, tenant=tenant)
                if not exc.rate_limit or self.pacer is None or resend == RATE_LIMIT_RESENDS:
                    raise
                asked = exc.retry_after if exc.retry_after is not None else DEFAULT_SLOWDOWN_SECONDS[exc.rate_limit]
                wait = min(asked, MAX_SLOWDOWN_SECONDS)
                self.pacer.slow_down(chat, wait, scope=exc.rate_limit)
                self.counters.add("rate_limited_sends")
                log.warning(
                    "gateway rate limit chat=%s (%s): slowing down %.1fs, then sending again",
                    chat.label,
                    exc.rate_limit,
                    wait,
                )
                continue
            self.metrics.send(chat.gateway, ok=True, seconds=time.monotonic() - began, tenant=tenant)
            return message_id
        raise AssertionError("unreachable")  # the loop returns or raises

    def _send(self, claim: Claim, parts: list[str], plan: Plan, start: int) -> tuple[str, list[Event]] | None:
        """Send the parts not sent yet, in order, through the chat's own gateway, each after its typing pause;
        remember each part's id (its echo is ours) and how many went out, and archive each part with that progress.
        Returns the last part's id ('' when the gateway gives none) and its archive event, for the ack; or None
        when it failed: then retry later with backoff (the parts already out are not sent again) or dead-letter."""
        gateway = self._of(claim.chat).gateways.get(claim.chat.gateway)
        sent = start
        message_id = ""
        archived: list[Event] = []
        try:
            if gateway is None:
                raise SendError(f"no sender for gateway {claim.chat.gateway!r}", transient=False)
            while sent < len(parts):
                part = parts[sent]
                typing_ms = self._typing_ms(claim.chat, part)
                # Only a split reply shows "typing…" before each part; otherwise each gateway's own default.
                typing = {"typing_ms": typing_ms, "reply_to": plan.reply_to} if typing_ms else {}
                message_id = self._send_part(claim.chat, gateway, part, typing)
                if sent == 0 and claim.attempts == 1:
                    lag, tenant = self.clock() - self._deadline(claim), claim.chat.tenant
                    self.metrics.debounce_lag(claim.chat.gateway, lag, tenant=tenant)
                archived = [
                    reply_part_event(
                        claim.chat,
                        reply_to=plan.reply_to or _last_record_id(claim),
                        index=sent,
                        text=part,
                        message_id=message_id,
                        at=self.clock(),
                        usage=plan.usage if sent == 0 else None,
                    )
                ]
                sent += 1
                if not claim.records_sent_ids:  # Redis records it with the progress below, or with the ack
                    self.conversations.mark_sent(claim.chat, message_id)
                if sent < len(parts):  # a re-claim after a crash sends only what is left
                    progress = self._mark(parts, sent)
                    also = self._also(claim, archived)
                    self.buffer.renew(
                        claim, now=self.clock(), sent=sent, sent_id=message_id, sending=progress, also=also
                    )
                    archived = []
            return message_id, archived
        except SendError as exc:
            self.counters.add("send_failures")
            if exc.transient and claim.attempts < self.settings.delivery_max_attempts:
                delay = min(
                    self.settings.delivery_retry_base_seconds * 2 ** (claim.attempts - 1), MAX_RETRY_DELAY_SECONDS
                )
                # A refusal the gateway answered means the part did not go out: the retry need not look for it.
                refused = NOT_SENDING if exc.status_code is not None else ""
                self.buffer.release(claim, retry_at=self.clock() + delay, sending=refused)
                self.metrics.send_retry(claim.chat.gateway, tenant=claim.chat.tenant)
                log.warning(
                    "send failed chat=%s attempt=%d part=%d/%d: %s; retrying in %.0fs",
                    claim.chat.label,
                    claim.attempts,
                    sent + 1,
                    len(parts),
                    exc,
                    delay,
                )
            else:
                self._dead_letter(claim, str(exc), "\n\n".join(parts), parts[sent:])
            return None

    def _dead_letter(self, claim: Claim, reason: str, reply: str, unsent: list[str]) -> None:
        """Give up on this burst's reply: keep it in the dead letters (with the reply and the parts not sent, for
        the owner to retry or discard), log and count it."""
        dead = dead_letter_event(
            claim.chat,
            about=_last_record_id(claim),
            reply=reply,
            unsent=unsent,
            error=reason,
            attempts=claim.attempts,
            at=self.clock(),
        )
        self._archive([dead])  # before: a crash right after dead-lettering must not lose it (same id if redone)
        if not self.buffer.dead_letter(claim, reason=reason, now=self.clock(), reply=reply, unsent=unsent):
            log.warning("lease lost chat=%s before dead-lettering; the new owner decides", claim.chat.label)
            return
        self.counters.add("dead_lettered")
        self.metrics.dead_letter(claim.chat.gateway, tenant=claim.chat.tenant)
        label, attempts = claim.chat.label, claim.attempts
        log.error("reply abandoned chat=%s after %d attempts: %s (kept in dead letters)", label, attempts, reason)


# Decision reasons that are counted in /health under their own name.
DECISION_COUNTERS = {
    "handoff_request": "handoff_requests",
    "opt_out": "opt_outs",
    "opt_in": "opt_ins",
    "out_of_hours": "out_of_hours_notices",
    "opted_out": "opted_out_skips",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """What goes with a stored reply, so a later attempt carries it out the same way: the conversation changes,
    the business_at the decision saw (a person acting after it withholds the reply), the message answered."""

    changes: Changes = field(default_factory=Changes)
    decided_with: float | None = None
    reply_to: str = ""
    written_at: float = 0.0  # when the reply was written; past REPLY_MAX_AGE_MINUTES it is not sent (0 = unknown)
    usage: dict[str, Any] | None = None  # what the model calls cost (archive.events.usage_data), for the archive

    def to_json(self) -> dict[str, object]:
        return {
            "changes": self.changes.to_json(),
            "decided_with": self.decided_with,
            "reply_to": self.reply_to,
            "written_at": self.written_at,
            "usage": self.usage,
        }

    @classmethod
    def from_json(cls, raw: str) -> Plan:
        """A stored plan; a reply stored by an older version (no plan) is sent without conversation checks."""
        try:
            data = json.loads(raw) if raw else {}
            return cls(
                changes=Changes.from_json(data.get("changes") or {}),
                decided_with=data.get("decided_with"),
                reply_to=str(data.get("reply_to") or ""),
                written_at=float(data.get("written_at") or 0.0),
                usage=data.get("usage") if isinstance(data.get("usage"), dict) else None,
            )
        except (ValueError, TypeError, AttributeError):
            return cls()


def _parse_mark(raw: str) -> tuple[int, str, float] | None:
    """(part number, text hash, when) of a batch's "about to send" note, or None."""
    try:
        data = json.loads(raw) if raw else None
        return (int(data["n"]), str(data["hash"]), float(data["at"])) if isinstance(data, dict) else None
    except (ValueError, TypeError, KeyError):
        return None


def _last_id(decision: Decision) -> str:
    return str(decision.answered[-1].get("id") or "") if decision.answered else ""


def _last_record_id(claim: Claim) -> str:
    """The id of the batch's newest message (what names its reply in the archive when no message is answered)."""
    return str(claim.messages[-1].get("id") or "") if claim.messages else ""


def encode_turns(turns: list[Turn]) -> str:
    return json.dumps([t.to_json() for t in turns], ensure_ascii=False)


def main() -> None:
    """`python worker.py`: the reply worker, the archive writer and the knowledge watcher, without an HTTP server
    (web processes then run with WORKER_ENABLED=false). Stops on SIGTERM or Ctrl-C, letting running replies finish;
    several may run, on several hosts."""
    import signal
    import sys

    from components import build_components  # here: components imports this module
    from config import load_settings, missing_for_production
    from errors import ConfigError
    from logs import setup_logging

    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    setup_logging(settings.log_level, settings.log_format)
    parts = build_components(settings)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    for problem in missing_for_production(settings):
        log.warning("%s", problem)
    writer = parts.archive.writer
    if writer is not None:
        writer.start()
    has_knowledge = parts.knowledge.configured or parts.tenants.multi  # the tenants' too (POST /reload-context)
    if has_knowledge and (settings.rag_auto_reload or parts.watcher.signal is not None):
        parts.watcher.start()
    parts.worker.start()
    log.info("worker process running (no HTTP server); web processes should run with WORKER_ENABLED=false")
    stop.wait()
    log.info("stopping: letting running replies finish")
    parts.worker.stop(timeout=STOP_TIMEOUT_SECONDS)
    if writer is not None:
        writer.stop()
    parts.watcher.stop()
    parts.worker.notifier.close()


STOP_TIMEOUT_SECONDS = 25.0  # under systemd's and Docker's default stop timeouts (90 s, 10 s: raise Docker's)


if __name__ == "__main__":
    main()
