"""logs.py: `mask_phone` never lets a full phone number, LID or group id reach a log line."""

from __future__ import annotations

import io
import logging

import pytest

from logs import OneLine, mask_phone, setup_logging
from models import ChatRef


def test_phone_jid_keeps_first_and_last_four_digits() -> None:
    assert mask_phone("5511987654321@s.whatsapp.net") == "5511*****4321"


def test_device_suffix_is_dropped_before_masking() -> None:
    assert mask_phone("5511987654321:12@s.whatsapp.net") == "5511*****4321"


def test_bare_number_is_masked_like_a_jid() -> None:
    assert mask_phone("5511987654321") == "5511*****4321"


@pytest.mark.parametrize(
    "jid",
    [
        "5511987654321@s.whatsapp.net",
        "5511987654321:12@s.whatsapp.net",
        "551198765432@s.whatsapp.net",  # older 8-digit mobile
        "187654321098765@lid",
        "187654321098765:3@lid",
        "120363025550001111@g.us",
        "5511987654321-1600000000@g.us",  # old-style group id: creator number + timestamp
        "120363287654321098@newsletter",
        "123456789@lid",  # nine characters: the shortest that shows both ends
        "12345678@s.whatsapp.net",
        "1234567@lid",
        "12345",
        "123",
    ],
)
def test_identifier_never_shown_in_full(jid: str) -> None:
    user = jid.split("@", 1)[0].split(":", 1)[0]
    masked = mask_phone(jid)
    assert user not in masked
    assert "@" not in masked
    assert "*" in masked


@pytest.mark.parametrize(
    ("jid", "expected"),
    [
        ("187654321098765@lid", "1876*****8765"),
        ("120363025550001111@g.us", "1203*****1111"),
        ("12345678@lid", "12*****78"),  # 7 to 11 characters: two at each end
        ("12345@lid", "1****"),  # 6 or fewer: only the first
        ("123", "1**"),
    ],
)
def test_lids_groups_and_short_ids(jid: str, expected: str) -> None:
    assert mask_phone(jid) == expected


def test_mask_hides_the_length_of_long_ids() -> None:
    assert len(mask_phone("5511987654321@s.whatsapp.net")) == len(mask_phone("120363025550001111@g.us")) == 13


@pytest.mark.parametrize("jid", ["", "@s.whatsapp.net", "@lid"])
def test_empty_user_gives_empty_mask(jid: str) -> None:
    assert mask_phone(jid) == ""


def test_chat_label_masks_the_chat_id() -> None:
    chat = ChatRef(gateway="evolution", instance="loja-centro", chat_id="5511987654321@s.whatsapp.net")
    assert chat.label == "evolution:loja-centro:5511*****4321"
    assert "5511987654321" not in chat.label


def test_setup_logging_sets_levels_and_quiets_http_libraries() -> None:
    root, httpx_logger = logging.getLogger(), logging.getLogger("httpx")
    saved_handlers, saved_level, saved_httpx_level = root.handlers[:], root.level, httpx_logger.level
    root.handlers = []  # pytest's capture handlers, restored below
    try:
        setup_logging("DEBUG")
        assert root.level == logging.DEBUG
        assert len(root.handlers) == 1
        assert httpx_logger.level == logging.WARNING
        setup_logging("ERROR")
        assert len(root.handlers) == 1  # configured once, not stacked
        assert (root.level, httpx_logger.level) == (logging.ERROR, logging.ERROR)
    finally:
        root.handlers = saved_handlers
        root.setLevel(saved_level)
        httpx_logger.setLevel(saved_httpx_level)


def test_setup_logging_leaves_existing_handlers_alone() -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    marker = logging.NullHandler()
    root.handlers = [marker]
    try:
        setup_logging("WARNING")
        assert root.handlers == [marker]
        assert root.level == logging.WARNING
    finally:
        root.handlers = saved_handlers
        root.setLevel(saved_level)


def test_twilio_and_meta_addresses_are_masked_like_jids() -> None:
    assert mask_phone("whatsapp:+5511987654321") == "5511*****4321"
    assert mask_phone("5511987654321") == "5511*****4321"


def test_payload_values_cannot_forge_log_lines_or_flood_them() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(OneLine())
    logger = logging.getLogger("test.one_line")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("ignored msg=%s reason=%s", "3EB0\n2026-12-05 INFO forged line", "status:\x00read\r")
        logger.warning("huge %s", "x" * 10_000)
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "ignored msg=3EB0\\n2026-12-05 INFO forged line reason=status:\\x00read\\r"
    assert len(lines) == 2 and len(lines[1]) < 2100 and lines[1].endswith("(10005 chars)")
