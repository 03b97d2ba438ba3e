"""A reply as the WhatsApp messages that carry it: cut to a gateway's `max_text_chars` at the most natural
boundary (`split_text`), or, with SPLIT_MESSAGES, one message per paragraph the way a person writes
(`reply_parts`). Pure: no I/O, no settings.
"""

from __future__ import annotations

import re


def split_text(text: str, limit: int) -> list[str]:
    """Cut a reply into parts of at most `limit` characters, preferring paragraph, then line, then sentence,
    then word boundaries; a part is cut mid-word only when a single word is longer than `limit`."""
    parts: list[str] = []
    rest = text.strip()
    while len(rest) > limit:
        window = rest[: limit + 1]
        cut = _boundary(window, limit)
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        parts.append(rest)
    return parts


def _boundary(window: str, limit: int) -> int:
    """Where to cut `window` (limit + 1 characters long), so that the part before is at most `limit`."""
    floor = limit // 3  # a boundary too early would make many tiny parts; go to the next kind instead
    for separators in (("\n\n",), ("\n",), (". ", "! ", "? ", "… "), (" ",)):
        cut = max(window.rfind(sep, 0, limit) + (1 if sep.strip() else 0) for sep in separators)
        if cut > floor:
            return min(cut, limit)
    return limit


def reply_parts(reply: str, *, max_parts: int, limit: int) -> list[str]:
    """A reply as several messages, the way a person writes (SPLIT_MESSAGES): one per paragraph (blank lines
    between), at most `max_parts` (the last carries the rest), each still cut to the gateway's `limit`."""
    paragraphs = [p.strip() for p in re.split(r"\n[ \t]*\n", reply.strip()) if p.strip()]
    if len(paragraphs) > max_parts:
        paragraphs = [*paragraphs[: max_parts - 1], "\n\n".join(paragraphs[max_parts - 1 :])]
    return [piece for paragraph in paragraphs for piece in split_text(paragraph, limit)]
