"""A burst's media, for the worker: `MediaLoader.burst(chat, messages)` builds the `Burst` once, deciding which
items Gemini gets as bytes (type allowed, within MEDIA_MAX_BYTES and the burst's MEDIA_MAX_BURST_BYTES) and fetching
them (the base64 the webhook carried, else through the chat's gateway); the burst then gives the pt-BR words that
stand for each item in the prompt and the history, and the notice that tells the customer what could not be read.

An item that cannot be read (too large, type not allowed, fetch failing) never fails its burst: it becomes a
`BurstPart` with a `problem`, the reply covers the rest, and MEDIA_FAILED_NOTICE tells the customer. Knows nothing
of the buffer: a burst is a chat and its message records.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from counters import Counters
from errors import MediaError
from gateways.base import Gateway
from gateways.http import decode_base64
from models import ChatRef, MediaRef

log = logging.getLogger(__name__)

# kind -> (name, "received" words, "could not be read" words, how the notice names it)
_WORDS: dict[str, tuple[str, str, str, str]] = {
    "voice": ("mensagem de voz", "mensagem de voz recebida", "mensagem de voz que não pôde ser ouvida", "o áudio"),
    "audio": ("áudio", "áudio recebido", "áudio que não pôde ser ouvido", "o áudio"),
    "image": ("imagem", "imagem recebida", "imagem que não pôde ser aberta", "a imagem"),
    "document": ("documento", "documento recebido", "documento que não pôde ser aberto", "o documento"),
    "video": ("vídeo", "vídeo recebido (o assistente não assiste vídeos)", "", "o vídeo"),
    "sticker": ("figurinha", "figurinha recebida", "", "a figurinha"),
    "location": ("localização", "localização compartilhada", "", "a localização"),
    "contact": ("contato", "contato compartilhado", "", "o contato"),
}
_UNKNOWN_WORDS = ("mídia", "mídia recebida", "mídia que não pôde ser aberta", "o arquivo")


def _words(media: MediaRef) -> tuple[str, str, str, str]:
    return _WORDS.get("voice" if media.voice else media.kind, _UNKNOWN_WORDS)


@dataclass(frozen=True, slots=True, kw_only=True)
class BurstPart:
    """One message of a burst as the prompt sees it: its text (a media's caption) and its media, with the
    bytes for Gemini when they could be had, or the `problem` that kept them out."""

    text: str = ""
    media: MediaRef | None = None
    message_id: str = ""
    has_blob: bool = False  # the webhook carried this item's base64 and the buffer kept it
    data: bytes | None = None
    mime: str = ""
    problem: str = ""  # too_large | unsupported | unreadable

    @property
    def readable(self) -> bool:
        """True when this part carries bytes Gemini will read."""
        return self.data is not None

    def describe(self, transcript: str = "") -> str:
        """The part in words, for the history (and for a prompt without its bytes): `[áudio] transcript`."""
        lines: list[str] = []
        if self.media is not None:
            name, received, unreadable, _ = _words(self.media)
            if self.problem:
                lines.append(f"[{unreadable or received}]")
            elif transcript:
                lines.append(f"[{name}] {transcript.strip()}")
            elif self.media.detail:
                lines.append(f"[{received}: {self.media.detail}]")
            else:
                lines.append(f"[{received}]")
        if self.text:
            lines.append(self.text)
        return "\n".join(lines)

    def prompt_label(self, number: int) -> str:
        """The text that precedes this part's bytes in the prompt: `[mídia 2: mensagem de voz, 7 s]`."""
        assert self.media is not None
        name = _words(self.media)[0]
        extra = [f"{self.media.seconds} s"] if self.media.seconds else []
        if self.media.file_name:
            extra.append(f'arquivo "{self.media.file_name}"')
        return f"[mídia {number}: {', '.join([name, *extra])}]"


def parts_of_records(records: Sequence[dict[str, Any]]) -> list[BurstPart]:
    """Buffered message records in the order given, without any bytes yet."""
    parts = []
    for message in records:
        media = MediaRef.from_json(message.get("media"))
        text = str(message.get("text") or "")
        if media is not None or text:
            parts.append(
                BurstPart(text=text, media=media, message_id=str(message.get("id")), has_blob=bool(message.get("blob")))
            )
    return parts


def drop_bytes(part: BurstPart) -> BurstPart:
    """The part without its bytes, as an item that could not be read (Gemini refused it)."""
    return replace(part, data=None, problem="unreadable") if part.readable else part


def user_record(parts: Sequence[BurstPart], transcripts: dict[int, str] | None = None) -> str:
    """The customer's turn as the history keeps it: texts, and each media item in words (with the transcript
    or description Gemini gave, keyed by the item's number in the prompt)."""
    transcripts = transcripts or {}
    lines = []
    number = 0
    for part in parts:
        if part.readable:
            number += 1
        lines.append(part.describe(transcripts.get(number, "") if part.readable else ""))
    return "\n".join(line for line in lines if line)


def failed_notice(parts: Sequence[BurstPart], template: str) -> str:
    """MEDIA_FAILED_NOTICE with {items} naming what could not be read ("o áudio e a imagem"), or ''."""
    names = list(dict.fromkeys(_words(p.media)[3] for p in parts if p.problem and p.media is not None))
    if not names or not template:
        return ""
    items = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} e {names[-1]}"
    try:
        return template.format(items=items)
    except (KeyError, IndexError, ValueError):  # an owner's template with other braces: use it as written
        return template


@dataclass(frozen=True, slots=True, kw_only=True)
class Burst:
    """A chat's burst as the worker uses it, built once by `MediaLoader.burst`: the customer's messages in arrival
    order, each readable media item with its bytes or the problem that kept them out."""

    parts: tuple[BurstPart, ...]
    notice_template: str = ""  # MEDIA_FAILED_NOTICE

    @property
    def has_readable_media(self) -> bool:
        """True when some part carries bytes Gemini will read."""
        return any(part.readable for part in self.parts)

    @property
    def notice(self) -> str:
        """What is added to the reply when an item could not be read ("Não consegui abrir o áudio..."), or ''."""
        return failed_notice(self.parts, self.notice_template)

    def record(self, transcripts: dict[int, str] | None = None) -> str:
        """The customer's turn as the history keeps it (see `user_record`)."""
        return user_record(self.parts, transcripts)

    def transcripts_by_id(self, transcripts: dict[int, str]) -> dict[str, str]:
        """The model's transcripts (keyed by the item's number in the prompt) keyed by the item's message id."""
        readable = [part for part in self.parts if part.readable]
        return {
            readable[number - 1].message_id: text
            for number, text in transcripts.items()
            if 0 < number <= len(readable) and text
        }

    def without_media(self) -> Burst:
        """The same burst with every item's bytes dropped as unreadable (Gemini refused them)."""
        return replace(self, parts=tuple(drop_bytes(part) for part in self.parts))


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaLimits:
    max_bytes: int
    max_burst_bytes: int
    allowed_types: tuple[str, ...]

    def allows(self, mime: str) -> bool:
        return base_type(mime) in self.allowed_types


def base_type(mime: str) -> str:
    """ "audio/ogg; codecs=opus" -> "audio/ogg"."""
    return mime.split(";", 1)[0].strip().lower()


class MediaLoader:
    """Builds bursts: gets the bytes of a burst's readable media, within the limits, in burst order."""

    def __init__(
        self,
        limits: MediaLimits,
        *,
        gateways: Mapping[str, Gateway],
        counters: Counters,
        notice_template: str = "",
    ) -> None:
        self.limits = limits
        self.gateways = gateways
        self.counters = counters
        self.notice_template = notice_template

    def burst(
        self, chat: ChatRef, messages: Sequence[dict[str, Any]], *, blob_of: Callable[[str], str | None]
    ) -> Burst:
        """The burst of `chat` made of these customer message records, each readable item with its bytes or a
        problem. `blob_of(message_id)` is the base64 the webhook carried for a message, when it is still kept.
        Items beyond the burst's budget are "too_large"; earlier items keep theirs (the customer's first words
        usually matter most)."""
        budget = self.limits.max_burst_bytes
        loaded = []
        for part in parts_of_records(messages):
            if part.media is None or not part.media.readable:
                loaded.append(part)
                continue
            part = self._load_one(chat, part, budget, blob_of)
            if part.data is not None:
                budget -= len(part.data)
            if part.problem:
                self.counters.add("media_unreadable")
                log.warning(
                    "media not read chat=%s msg=%s kind=%s problem=%s",
                    chat.label,
                    part.message_id,
                    part.media.kind if part.media else "-",
                    part.problem,
                )
            loaded.append(part)
        return Burst(parts=tuple(loaded), notice_template=self.notice_template)

    def _load_one(self, chat: ChatRef, part: BurstPart, budget: int, blob_of: Callable[[str], str | None]) -> BurstPart:
        media = part.media
        assert media is not None
        limit = min(self.limits.max_bytes, budget)
        if media.mime and not self.limits.allows(media.mime):
            return replace(part, problem="unsupported")
        if media.size > limit:
            return replace(part, problem="too_large")
        try:
            blob = blob_of(part.message_id) if part.has_blob else None
            data, mime = self._fetch(chat, media, part.message_id, blob, limit)
        except MediaError as exc:
            log.info("media fetch failed chat=%s msg=%s: %s", chat.label, part.message_id, exc)
            return replace(part, problem=exc.problem)
        except Exception:  # a bug in one download must cost that item, never the burst (it would retry forever)
            log.exception("media fetch crashed chat=%s msg=%s", chat.label, part.message_id)
            return replace(part, problem="unreadable")
        mime = mime or media.mime
        if not self.limits.allows(mime):
            return replace(part, problem="unsupported")
        self.counters.add("media_read")
        return replace(part, data=data, mime=mime)

    def _fetch(
        self, chat: ChatRef, media: MediaRef, message_id: str, blob: str | None, limit: int
    ) -> tuple[bytes, str]:
        """The base64 the webhook carried (`blob`) when it is still kept and valid, else a download by the chat's
        gateway."""
        if blob:
            try:
                return decode_base64(blob, what="webhook base64", max_bytes=limit), media.mime
            except MediaError as exc:
                if exc.problem == "too_large":
                    raise
                log.info("webhook base64 unusable chat=%s msg=%s: %s", chat.label, message_id, exc)
        gateway = self.gateways.get(chat.gateway)
        if gateway is None:
            raise MediaError(f"gateway {chat.gateway!r} cannot download media")
        self.counters.add("media_fetches")
        return gateway.fetch_media(chat, media, max_bytes=limit)
