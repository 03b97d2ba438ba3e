"""Keyword matching for conversation control, pure: the customer's opt-out and opt-in words (the whole message),
requests for a person (phrases found as whole words anywhere in a burst), and the commands a human attendant
types (`#bot`, `#humano`, `#encerrar`). Every comparison ignores case, accents, punctuation and extra spaces.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from knowledge import fold

_NOT_WORD = re.compile(r"[^\w#]+")  # '#' stays: the attendant's commands start with it


def normalize(text: str) -> str:
    """ "Não, PARE!!" -> "nao pare": folded, punctuation turned into single spaces, trimmed."""
    return " ".join(_NOT_WORD.sub(" ", fold(text).replace("_", " ")).split())


def keyword_set(keywords: Iterable[str]) -> frozenset[str]:
    """Keywords as `normalize` makes them, empty ones dropped."""
    return frozenset(word for word in (normalize(k) for k in keywords) if word)


def is_whole_message(text: str, keywords: frozenset[str]) -> bool:
    """True when the message is one of `keywords` and nothing else: "Parar." is, "não quero parar" is not."""
    return normalize(text) in keywords


def mentions(text: str, phrases: frozenset[str]) -> bool:
    """True when one of `phrases` appears as whole words: "quero falar com um atendente" mentions "atendente",
    "atendentes" does not."""
    padded = f" {normalize(text)} "
    return any(f" {phrase} " in padded for phrase in phrases)
