"""keywords.py, pure: opt-out and opt-in words match the whole message, handoff phrases match as whole words
anywhere, attendant commands keep their '#'; case, accents, punctuation and extra spaces never matter.
"""

from __future__ import annotations

import pytest

from config import DEFAULT_HANDOFF_KEYWORDS, DEFAULT_OPT_IN_KEYWORDS, DEFAULT_OPT_OUT_KEYWORDS
from keywords import is_whole_message, keyword_set, mentions, normalize

OPT_OUT = keyword_set(DEFAULT_OPT_OUT_KEYWORDS)
OPT_IN = keyword_set(DEFAULT_OPT_IN_KEYWORDS)
HANDOFF = keyword_set(DEFAULT_HANDOFF_KEYWORDS)
COMMANDS = keyword_set(["#bot", "#humano", "#encerrar"])


def matches(kind: str, text: str) -> bool:
    """What the reply policy asks for each kind of keyword."""
    if kind == "opt_out":
        return is_whole_message(text, OPT_OUT)
    if kind == "opt_in":
        return is_whole_message(text, OPT_IN)
    if kind == "command":
        return is_whole_message(text, COMMANDS)
    assert kind == "handoff"
    return mentions(text, HANDOFF)


@pytest.mark.parametrize(
    ("kind", "text", "expected"),
    [
        # opt-out: the whole message, whatever the case, accents, punctuation and spaces
        ("opt_out", "Parar", True),
        ("opt_out", "PARAR!!", True),
        ("opt_out", "parar.", True),
        ("opt_out", "  Párar ", True),
        ("opt_out", "Pa\u0301rar", True),  # the accent as a combining mark
        ("opt_out", "*PARAR*", True),  # WhatsApp bold
        ("opt_out", "_parar_", True),  # WhatsApp italics
        ("opt_out", "parar\n", True),
        ("opt_out", "Pare!", True),
        ("opt_out", "STOP", True),
        ("opt_out", "Descadastrar.", True),
        ("opt_out", "não quero parar", False),
        ("opt_out", "parar de mandar?", False),
        ("opt_out", "parar parar", False),
        ("opt_out", "pararam", False),
        ("opt_out", "para", False),
        ("opt_out", "", False),
        ("opt_out", "!!!", False),
        # opt-in
        ("opt_in", "Voltar", True),
        ("opt_in", "VOLTAR!", True),
        ("opt_in", "quero voltar", False),
        # handoff phrases: whole words anywhere in the text
        ("handoff", "quero falar com um ATENDENTE por favor", True),
        ("handoff", "Quero falar com alguem", True),
        ("handoff", "Atendênte", True),
        ("handoff", "atendente.", True),
        ("handoff", "falar com um humano!", True),
        ("handoff", "atendimento humano, por favor", True),
        ("handoff", "quero falar\ncom uma\n\npessoa", True),
        ("handoff", "é uma pessoa de verdade?", True),
        ("handoff", "pessoa-de-verdade", True),
        ("handoff", "FALAR   COM   HUMANO", True),
        ("handoff", "atendentes", False),
        ("handoff", "superatendente", False),
        ("handoff", "Preciso de atendimento", False),
        ("handoff", "falar com humanos", False),
        ("handoff", "falar com a loja", False),
        ("handoff", "", False),
        # attendant commands keep their '#'
        ("command", "#bot", True),
        ("command", "#Bot", True),
        ("command", " #BOT! ", True),
        ("command", "#Encerrar", True),
        ("command", "bot", False),
        ("command", "# bot", False),
        ("command", "#bot agora", False),
    ],
)
def test_keyword_matching(kind: str, text: str, expected: bool) -> None:
    assert matches(kind, text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Não, PARE!!", "nao pare"),
        ("  Párar ", "parar"),
        ("#Bot", "#bot"),
        ("falar\ncom\t um   HUMANO!", "falar com um humano"),
        ("*negrito* _itálico_ ~riscado~", "negrito italico riscado"),
        ("Falar com alguém?", "falar com alguem"),
        ("ÇÃO", "cao"),
        ("", ""),
        (" ?! ... ", ""),
    ],
)
def test_normalize(text: str, expected: str) -> None:
    assert normalize(text) == expected


def test_commands_keep_their_hash() -> None:
    assert normalize("#Bot") == "#bot"
    assert normalize("#bot") != normalize("bot")


def test_keyword_set_normalizes_and_drops_empty_entries() -> None:
    words = keyword_set(["Parar", "", "   ", "!!", "PARAR", "Falar com Alguém", "#Bot"])
    assert words == frozenset({"parar", "falar com alguem", "#bot"})


def test_empty_keyword_sets_match_nothing() -> None:
    nothing = keyword_set(["", " ", "?"])
    assert nothing == frozenset()
    assert not is_whole_message("", nothing)
    assert not mentions("qualquer coisa", nothing)
    assert not mentions("", nothing)


def test_default_keyword_lists_are_all_kept() -> None:
    assert len(HANDOFF) == len(DEFAULT_HANDOFF_KEYWORDS)
    assert len(OPT_OUT) == len(DEFAULT_OPT_OUT_KEYWORDS)
    assert "falar com alguem" in HANDOFF
