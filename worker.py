"""The background worker: claim due chats -> media -> prompt -> reply -> send -> history -> ack. Handles no
HTTP itself (media downloads and sends go through the chat's gateway).

One daemon thread per serving process runs `run_forever`; each claimed chat is processed on a small
thread pool so replies go out concurrently. Claims are leased: the loop renews the leases of the chats it
is working on, so a chat returns to the queue only when its process died or hung.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ai_service import AIService, Generated
from buffer import Buffer, Claim
from config import Settings
from counters import Counters
from errors import AIServiceError, SendError
from media import BurstPart, MediaLimits, MediaLoader, drop_bytes, failed_notice, parts_of, user_record
from memory import History, Turn
from sender import TextSender, split_text

log = logging.getLogger(__name__)

MAX_RETRY_DELAY_SECONDS = 600.0
MAX_IDLE_BACKOFF_SECONDS = 5.0
DEFAULT_MAX_TEXT_CHARS = 4096


class Worker:
    """Drains the buffer. `run_once()` is one claim round; `start()` runs it in a loop on a thread."""

    def __init__(
        self,
        settings: Settings,
        *,
        buffer: Buffer,
        history: History,
        ai: AIService,
        senders: dict[str, TextSender],
        counters: Counters,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.buffer = buffer
        self.history = history
        self.ai = ai
        self.senders = senders
        self.counters = counters
        self.clock = clock
        self.media = MediaLoader(
            MediaLimits(
                max_bytes=settings.media_max_bytes,
                max_burst_bytes=settings.media_max_burst_bytes,
                allowed_types=settings.media_allowed_types,
            ),
            blob_of=buffer.media_blob,
            fetchers=senders,
            counters=counters,
        )
        self._stop = threading.Event()
        self._slot_free = threading.Event()  # set when a reply finishes or on stop
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._in_flight: dict[str, Claim] = {}  # token -> claim, for lease renewal
        self._in_flight_lock = threading.Lock()
        self._last_heartbeat = 0.0
        self.last_loop_at = 0.0

    # ----- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        if self.is_alive():
            return
        self._stop.clear()
        self._pool = ThreadPoolExecutor(self.settings.worker_concurrency, thread_name_prefix="reply")
        self._thread = threading.Thread(target=self.run_forever, name="buffer-worker", daemon=True)
        self._thread.start()
        log.info("worker started concurrency=%d", self.settings.worker_concurrency)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming, let running replies finish for up to `timeout` seconds. Unfinished batches
        keep their lease and are claimed again by another process once it expires."""
        self._stop.set()
        self._slot_free.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        with self._in_flight_lock:
            # Cancelled jobs never reach their `finally`; their leases simply expire.
            self._in_flight.clear()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def run_forever(self) -> None:
        failures = 0
        try:
            while not self._stop.is_set():
                claimed = 0
                try:
                    claimed = self.run_once()
                    self.renew_leases()
                    failures = 0
                except Exception:  # the loop must survive anything; one bad round is logged and retried
                    failures += 1
                    log.exception("worker round failed (%d in a row)", failures)
                self.last_loop_at = time.time()
                if not claimed:
                    pause = min(self.settings.worker_poll_seconds * (2 ** min(failures, 5)), MAX_IDLE_BACKOFF_SECONDS)
                    # A saturated pool wakes up as soon as one reply finishes, not a whole poll later.
                    self._slot_free.wait(pause)
                    self._slot_free.clear()
        finally:
            log.info("worker stopped")

    # ----- one round -------------------------------------------------------------------------------

    def run_once(self, *, wait: bool = False) -> int:
        """Claim the chats that are due and start answering them; returns how many were claimed.

        With `wait=True` (tests, benchmarks) the claims are processed here, one after another.
        """
        with self._in_flight_lock:
            free = self.settings.worker_concurrency - len(self._in_flight)
        if free <= 0:
            return 0
        claims = self.buffer.claim_due(now=self.clock(), limit=free)
        for claim in claims:
            with self._in_flight_lock:
                self._in_flight[claim.token] = claim
            if wait or self._pool is None:
                self._process_guarded(claim)
            else:
                self._pool.submit(self._process_guarded, claim)
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
            if not self.buffer.renew(claim, now=now):
                log.warning("lease lost chat=%s: another worker took it over", claim.chat.label)

    def _process_guarded(self, claim: Claim) -> None:
        try:
            self.process(claim)
        except Exception:  # one chat's failure must not stop the others; its lease brings it back
            self.counters.add("worker_errors")
            log.exception("answering chat=%s failed; it will be retried when its lease expires", claim.chat.label)
        finally:
            with self._in_flight_lock:
                self._in_flight.pop(claim.token, None)
            self._slot_free.set()

    # ----- one chat --------------------------------------------------------------------------------

    def process(self, claim: Claim) -> None:
        """Answer one claimed burst: reuse a stored reply or fetch its media and ask Gemini, fence, send,
        remember, ack."""
        chat = claim.chat
        parts = parts_of(claim)
        if not parts:
            self.buffer.ack(claim)
            return
        if claim.reply:
            reply, turns = claim.reply, self._stored_turns(claim, parts)
            owned = self.buffer.renew(claim, now=self.clock())  # fence: still ours, right before sending
        else:
            composed = self._compose_new(claim, parts)
            if composed is None:
                return
            reply, turns = composed
            # Fence: store the reply and its history turns with the batch, and check we still own it.
            owned = self.buffer.renew(claim, now=self.clock(), reply=reply, turns=encode_turns(turns))
            if owned:
                self._forget_media(claim)
        if not owned:
            log.warning("lease lost chat=%s before sending; the new owner answers", chat.label)
            return
        if not self._send(claim, reply):
            return
        # History before ack: once acked, the chat's next burst may be claimed at once and must see this turn.
        self.history.append(chat, turns)
        if not self.buffer.ack(claim):
            self.counters.add("late_acks")
            log.warning("reply sent but lease had expired chat=%s: it may be answered twice", chat.label)
        self.counters.add("replies_sent")
        log.info(
            "reply sent chat=%s messages=%d media=%d attempt=%d chars=%d fallback=%s",
            chat.label,
            len(claim.messages),
            sum(1 for p in parts if p.media is not None),
            claim.attempts,
            len(reply),
            not any(turn.role == "model" for turn in turns),  # FALLBACK_REPLY is never a model turn
        )

    def _compose_new(self, claim: Claim, parts: list[BurstPart]) -> tuple[str, list[Turn]] | None:
        """(reply, history turns) for a burst without a stored reply; None when it is settled without one
        (loop guard, or Gemini failed and FALLBACK_REPLY is empty)."""
        chat = claim.chat
        if self._is_a_loop(claim):
            self.buffer.ack(claim)
            self.history.append(chat, [Turn(role="user", text=user_record(parts), at=self.clock())])
            return None
        self._mark_read(claim)
        generated, parts = self._ask_gemini(claim, self.media.load(claim, parts))
        if generated is None:
            if not self.settings.fallback_reply:  # the owner chose silence over an apology
                self.buffer.ack(claim)
                self.history.append(chat, [Turn(role="user", text=user_record(parts), at=self.clock())])
                log.error("no reply sent chat=%s: gemini failed and FALLBACK_REPLY is empty", chat.label)
                return None
            # The fallback is not a model turn: the unanswered burst joins the next prompt instead.
            return self.settings.fallback_reply, [Turn(role="user", text=user_record(parts), at=self.clock())]
        reply = generated.reply
        notice = failed_notice(parts, self.settings.media_failed_notice)
        if notice:
            reply = f"{reply}\n\n{notice}"
        now = self.clock()
        return reply, [
            Turn(role="user", text=user_record(parts, generated.transcripts), at=now),
            Turn(role="model", text=reply, at=now),
        ]

    def _stored_turns(self, claim: Claim, parts: list[BurstPart]) -> list[Turn]:
        """The history turns stored with an earlier attempt's reply (or, for a reply stored by an older version
        without them, the burst's text and the reply)."""
        try:
            return [Turn(**turn) for turn in json.loads(claim.turns)]
        except (ValueError, TypeError):
            now = self.clock()
            turns = [Turn(role="user", text=user_record(parts), at=now)]
            if claim.reply != self.settings.fallback_reply:
                turns.append(Turn(role="model", text=claim.reply, at=now))
            return turns

    def _forget_media(self, claim: Claim) -> None:
        """The reply is stored with the batch, so the media base64 kept for it is not needed again."""
        try:
            self.buffer.drop_media(claim)
        except Exception as exc:  # best effort: the keys expire on their own
            log.info("could not drop media of chat=%s now: %s", claim.chat.label, exc.__class__.__name__)

    def _is_a_loop(self, claim: Claim) -> bool:
        """True when this chat already got MAX_REPLIES_PER_HOUR replies: most likely another bot answering
        every reply of ours. The burst is then kept in the history, logged and counted, not answered."""
        limit = self.settings.max_replies_per_hour
        if not limit or self.buffer.count_reply(claim, now=self.clock()) <= limit:
            return False
        self.counters.add("loop_guard")
        log.warning("reply limit reached chat=%s (%d/hour): not answering, possible bot loop", claim.chat.label, limit)
        return True

    def _mark_read(self, claim: Claim) -> None:
        """Read receipt for the burst's last message, where the gateway offers one (best effort)."""
        mark_read = getattr(self.senders.get(claim.chat.gateway), "mark_read", None)
        if mark_read is not None and claim.messages:
            mark_read(claim.chat, str(claim.messages[-1].get("id", "")))

    def _ask_gemini(self, claim: Claim, parts: list[BurstPart]) -> tuple[Generated | None, list[BurstPart]]:
        """(Gemini's reply and media transcripts, or None when Gemini keeps failing; the parts it was given).

        When Gemini refuses a burst's media (400: a corrupt voice note, say), it is asked once more with the media
        as words, so one bad item costs the customer that item, not the whole answer.
        """
        history = self.history.recent(claim.chat)
        try:
            return self.ai.generate(history, parts), parts
        except AIServiceError as exc:
            if exc.status_code == 400 and any(part.readable for part in parts):
                self.counters.add("media_refused")
                log.warning("gemini refused the media of chat=%s (%s); asking again without it", claim.chat.label, exc)
                return self._ask_gemini(claim, [drop_bytes(part) for part in parts])
            self.counters.add("ai_failures")
            self.counters.add("fallbacks")
            log.error("gemini failed chat=%s: %s; sending FALLBACK_REPLY", claim.chat.label, exc)
            return None, parts

    def _send(self, claim: Claim, reply: str) -> bool:
        """Send through the chat's own gateway, in parts if the reply exceeds its limit; on failure retry
        later with backoff (keeping only the parts not yet sent) or dead-letter."""
        sender = self.senders.get(claim.chat.gateway)
        # Test doubles and future gateways may not declare a limit; WhatsApp's own is 4096 characters.
        parts = split_text(reply, getattr(sender, "max_text_chars", DEFAULT_MAX_TEXT_CHARS))
        sent = 0
        try:
            if sender is None:
                raise SendError(f"no sender for gateway {claim.chat.gateway!r}", transient=False)
            for part in parts:
                sender.send_text(claim.chat, part)
                sent += 1
                if sent < len(parts):  # a re-claim after a crash sends only what is left
                    self.buffer.renew(claim, now=self.clock(), reply="\n".join(parts[sent:]))
            return True
        except SendError as exc:
            self.counters.add("send_failures")
            if exc.transient and claim.attempts < self.settings.delivery_max_attempts:
                delay = min(
                    self.settings.delivery_retry_base_seconds * 2 ** (claim.attempts - 1), MAX_RETRY_DELAY_SECONDS
                )
                self.buffer.release(claim, retry_at=self.clock() + delay, reply="\n".join(parts[sent:]))
                log.warning(
                    "send failed chat=%s attempt=%d: %s; retrying in %.0fs",
                    claim.chat.label,
                    claim.attempts,
                    exc,
                    delay,
                )
            else:
                if not self.buffer.dead_letter(claim, reason=str(exc), now=self.clock()):
                    log.warning("lease lost chat=%s before dead-lettering; the new owner decides", claim.chat.label)
                    return False
                self.counters.add("dead_lettered")
                log.error(
                    "reply abandoned chat=%s after %d attempts: %s (kept in dead letters)",
                    claim.chat.label,
                    claim.attempts,
                    exc,
                )
            return False


def encode_turns(turns: list[Turn]) -> str:
    return json.dumps([{"role": t.role, "text": t.text, "at": t.at} for t in turns], ensure_ascii=False)
