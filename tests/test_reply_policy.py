"""Who answers a due burst (reply_policy.decide), as a state machine over the chat's conversation status: open,
paused by a person (with an end or without), closed (by a command or idleness), opted out; and the customer's
keywords, requests for a person and the business hours. Pure: statuses and buffered records are built here.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from conversation import Status
from memory import Turn
from reply_policy import AI, NONE, TEXT, Rules, dated, decide, now_note
from tests.conftest import make_settings

SP = ZoneInfo("America/Sao_Paulo")
# Friday 2026-12-04 10:00 in São Paulo: open on weekdays 08:00-18:00.
T = datetime(2026, 12, 4, 10, 0, tzinfo=SP).timestamp()
PAUSE = 7200.0
IDLE = 86400.0
HOURS = "mon-fri 08:00-18:00"


def rules(**overrides: Any) -> Rules:
    return Rules.from_settings(make_settings(**overrides))


def msg(at: float, text: str, n: int = 0) -> dict[str, Any]:
    return {"id": f"C{n or int(at)}", "text": text, "kind": "text", "name": "Ana", "ts": 0, "at": at}


def human(at: float, text: str) -> dict[str, Any]:
    return {"id": f"H{int(at)}", "text": text, "kind": "text", "name": "", "ts": 0, "at": at, "by": "human"}


def open_since(at: float, **fields: Any) -> Status:
    return Status(**{"state": "open", "opened_at": at, "last_at": at, **fields})


def texts(records: tuple[dict[str, Any], ...]) -> list[str]:
    return [r["text"] for r in records]


def turns(decision_turns: tuple[Turn, ...]) -> list[tuple[str, str, str]]:
    return [(t.role, t.by, t.text) for t in decision_turns]


# ----- open conversations ----------------------------------------------------------------------------------


def test_an_ordinary_burst_is_for_the_ai() -> None:
    d = decide([msg(T, "Oi"), msg(T + 5, "Quanto custa?")], Status(), rules(), now=T + 130)
    assert (d.action, d.reason, texts(d.answered), d.earlier, d.skipped) == (
        AI,
        "answer",
        ["Oi", "Quanto custa?"],
        (),
        0,
    )
    assert (d.changes.first_at, d.changes.last_at, d.conversation_since) == (T, T + 5, T)


def test_a_burst_without_content_is_not_answered() -> None:
    record = {"id": "C1", "text": "", "kind": "image", "at": T}
    assert decide([record], Status(), rules(), now=T + 1).reason == "empty"


# ----- a person handling the chat --------------------------------------------------------------------------


def test_messages_during_a_pause_go_to_the_history_unanswered() -> None:
    status = open_since(T, state="paused", paused_at=T, paused_until=T + PAUSE, business_at=T, last_at=T)
    d = decide([msg(T + 60, "Oi?"), msg(T + 61, "Alguém?")], status, rules(), now=T + 200)
    assert (d.action, d.reason, d.answered, d.skipped) == (NONE, "paused", (), 2)
    assert turns(d.earlier) == [("user", "customer", "Oi?\nAlguém?")]


def test_the_persons_message_answers_what_came_before_it_and_follows_it_in_the_history() -> None:
    status = open_since(T, state="paused", paused_at=T + 30, paused_until=T + 30 + PAUSE, business_at=T + 30)
    d = decide([msg(T, "Tem bolo de cenoura?"), human(T + 30, "Tem sim! R$ 48.")], status, rules(), now=T + 150)
    assert (d.action, d.reason, d.skipped) == (NONE, "paused", 1)
    assert turns(d.earlier) == [("user", "customer", "Tem bolo de cenoura?"), ("model", "human", "Tem sim! R$ 48.")]


def test_after_a_resume_only_what_the_customer_writes_next_is_answered() -> None:
    # paused by the person's message at T+30, resumed with #bot at T+90 (a command: not in the burst)
    status = open_since(T, state="open", business_at=T + 90, last_at=T + 90)
    burst = [msg(T, "Oi"), human(T + 30, "Olá, sou a Maria"), msg(T + 60, "ok"), msg(T + 120, "E o preço?")]
    d = decide(burst, status, rules(), now=T + 240)
    assert (d.action, texts(d.answered), d.skipped) == (AI, ["E o preço?"], 2)
    assert turns(d.earlier) == [
        ("user", "customer", "Oi"),
        ("model", "human", "Olá, sou a Maria"),
        ("user", "customer", "ok"),
    ]


def test_a_pause_from_the_admin_api_covers_what_was_waiting() -> None:
    status = open_since(T, state="paused", paused_at=T + 50, paused_until=math.inf, business_at=T + 50)
    d = decide([msg(T + 10, "Oi")], status, rules(), now=T + 130)
    assert (d.action, d.skipped) == (NONE, 1)


def test_a_pause_that_ran_out_leaves_the_later_messages_to_the_bot() -> None:
    status = open_since(T, state="paused", paused_at=T, paused_until=T + 100, last_at=T)
    d = decide([msg(T + 50, "durante"), msg(T + 150, "depois")], status, rules(), now=T + 300)
    assert (d.action, texts(d.answered), turns(d.earlier)) == (AI, ["depois"], [("user", "customer", "durante")])


def test_a_pause_without_limit_ends_with_the_conversation() -> None:
    status = open_since(T, state="paused", paused_at=T, paused_until=math.inf, business_at=T)
    assert decide([msg(T + IDLE - 1, "ainda?")], status, rules(), now=T + IDLE).action == NONE
    d = decide([msg(T + IDLE + 1, "Bom dia")], status, rules(), now=T + IDLE + 2)
    assert (d.action, d.conversation_since) == (AI, T + IDLE + 1)


def test_after_a_close_the_next_message_starts_a_conversation_the_bot_answers() -> None:
    status = Status(state="closed", closed_at=T + 10, opened_at=T, last_at=T + 10, business_at=T + 10)
    d = decide([msg(T + 5, "antes"), msg(T + 20, "Oi de novo")], status, rules(), now=T + 200)
    assert (d.action, texts(d.answered), d.conversation_since) == (AI, ["Oi de novo"], T + 20)
    assert turns(d.earlier) == [("user", "customer", "antes")]


# ----- opt-out and opt-in ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["parar", "Parar.", "PARE!!", " sair ", "Descadastrar", "stop"])
def test_an_opt_out_word_as_the_whole_message_opts_out(text: str) -> None:
    d = decide([msg(T, "Oi"), msg(T + 1, text)], open_since(T - 60), rules(), now=T + 121)
    assert (d.action, d.reason, d.changes.opt) == (TEXT, "opt_out", "out")
    assert d.text == make_settings().opt_out_reply


@pytest.mark.parametrize("text", ["não quero parar", "parar de mandar promoção?", "pode sair hoje?"])
def test_an_opt_out_word_inside_a_sentence_is_a_question_for_the_ai(text: str) -> None:
    assert decide([msg(T, text)], open_since(T - 60), rules(), now=T + 121).action == AI


def test_an_opted_out_customer_gets_nothing_until_an_opt_in_word() -> None:
    status = open_since(T - 60, opted_out=True)
    d = decide([msg(T, "quero falar com um atendente"), msg(T + 1, "oi")], status, rules(), now=T + 130)
    assert (d.action, d.reason, d.notify, texts(d.answered)) == (
        NONE,
        "opted_out",
        False,
        [d.answered[0]["text"], "oi"],
    )
    d = decide([msg(T, "Voltar")], status, rules(), now=T + 130)
    assert (d.action, d.reason, d.changes.opt, d.text) == (TEXT, "opt_in", "in", make_settings().opt_in_reply)


def test_an_empty_opt_out_reply_still_opts_out() -> None:
    d = decide([msg(T, "parar")], Status(), rules(opt_out_reply=""), now=T + 130)
    assert (d.action, d.reason, d.changes.opt) == (NONE, "opt_out", "out")


# ----- a request for a person ------------------------------------------------------------------------------


def test_a_request_for_a_person_gets_the_handoff_reply_and_pauses_from_it() -> None:
    burst = [msg(T, "Oi"), msg(T + 3, "Quero falar com um ATENDENTE, por favor")]
    d = decide(burst, open_since(T - 60), rules(), now=T + 130)
    assert (d.action, d.reason, d.text, d.notify) == (TEXT, "handoff_request", make_settings().handoff_reply, True)
    assert (d.changes.pause_from, d.changes.pause_seconds) == (T + 3, PAUSE)


def test_a_request_when_nobody_is_there_names_the_opening_and_pauses_until_after_it() -> None:
    friday_night = datetime(2026, 12, 4, 23, 0, tzinfo=SP).timestamp()
    monday_8 = datetime(2026, 12, 7, 8, 0, tzinfo=SP).timestamp()
    d = decide([msg(friday_night, "falar com alguem")], Status(), rules(business_hours=HOURS), now=friday_night + 1)
    assert d.reason == "handoff_request" and "segunda-feira às 08:00" in d.text, d.text
    assert "{next_open}" not in d.text
    assert d.changes.pause_from + d.changes.pause_seconds == pytest.approx(monday_8 + PAUSE)


def test_with_handoff_off_a_request_is_answered_without_a_pause() -> None:
    d = decide([msg(T, "atendimento humano")], Status(), rules(handoff_pause_minutes=0), now=T + 1)
    assert (d.action, d.changes.pause_from) == (TEXT, None)


@pytest.mark.parametrize("text", ["os atendentes são legais", "atendimento é bom?", "falar com o humano"])
def test_near_misses_are_not_requests(text: str) -> None:
    assert decide([msg(T, text)], Status(), rules(), now=T + 1).action == AI


# ----- business hours --------------------------------------------------------------------------------------


def test_outside_hours_the_notice_goes_once_per_closed_period() -> None:
    saturday = datetime(2026, 12, 5, 11, 0, tzinfo=SP).timestamp()
    r = rules(business_hours=HOURS, bot_hours="business")
    d = decide([msg(saturday, "Vocês entregam hoje?")], Status(), r, now=saturday + 1)
    assert (d.action, d.reason) == (TEXT, "out_of_hours")
    assert "segunda-feira às 08:00" in d.text
    told = open_since(saturday, notice_for=d.changes.notice_for)
    again = decide([msg(saturday + 3600, "?")], told, r, now=saturday + 3601)
    assert (again.action, again.reason) == (NONE, "out_of_hours_told")
    monday_night = datetime(2026, 12, 7, 19, 0, tzinfo=SP).timestamp()  # another closed period
    told = open_since(monday_night - 60, notice_for=d.changes.notice_for)
    assert decide([msg(monday_night, "oi")], told, r, now=monday_night + 1).reason == "out_of_hours"
    # Within hours the AI answers.
    assert decide([msg(T, "oi")], told, r, now=T + 1).action == AI


def test_a_new_conversation_in_the_same_closed_period_is_told_again() -> None:
    saturday = datetime(2026, 12, 5, 9, 0, tzinfo=SP).timestamp()
    r = rules(business_hours=HOURS, bot_hours="business", conversation_idle_minutes=60)
    first = decide([msg(saturday, "oi")], Status(), r, now=saturday)
    told = open_since(saturday, notice_for=first.changes.notice_for)
    later = saturday + 3 * 3600  # the conversation closed after an hour without messages
    assert decide([msg(later, "oi?")], told, r, now=later).reason == "out_of_hours"


def test_with_bot_hours_outside_the_bot_is_silent_while_people_are_there() -> None:
    r = rules(business_hours=HOURS, bot_hours="outside")
    assert decide([msg(T, "oi")], Status(), r, now=T + 1).reason == "business_hours"
    night = datetime(2026, 12, 4, 22, 0, tzinfo=SP).timestamp()
    assert decide([msg(night, "oi")], Status(), r, now=night + 1).action == AI


def test_a_holiday_is_closed_all_day() -> None:
    r = rules(business_hours=HOURS, bot_hours="business", holidays="2026-12-04")
    d = decide([msg(T, "oi")], Status(), r, now=T + 1)
    assert d.reason == "out_of_hours" and "segunda-feira às 08:00" in d.text


# ----- history for the prompt ------------------------------------------------------------------------------


def test_turns_of_earlier_conversations_carry_their_date() -> None:
    yesterday = datetime(2026, 12, 3, 15, 30, tzinfo=SP).timestamp()
    history = [Turn(role="user", text="Tem pão?", at=yesterday), Turn(role="model", text="Tem!", at=yesterday + 5)]
    marked, any_marked = dated(history + [Turn(role="user", text="hoje", at=T)], T, make_settings().hours)
    assert any_marked
    assert [t.text for t in marked] == [
        "[conversa anterior, 03/12/2026 15:30] Tem pão?",
        "[conversa anterior, 03/12/2026 15:30] Tem!",
        "hoje",
    ]
    assert dated(history, 0.0, make_settings().hours) == (history, False)


def test_the_note_tells_gemini_the_date_when_earlier_conversations_are_in_the_prompt() -> None:
    assert now_note(T, make_settings().hours).startswith("Agora é sexta-feira, 04/12/2026 10:00.")
