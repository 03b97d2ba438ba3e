"""HTTP fuzzer of the real service: mutated gateway webhooks, admin and knowledge calls, counted by status.

Starts its own redis-server (free port, no persistence), local fakes of Gemini, Evolution, the Meta Graph API,
Twilio and Mega (tests/fakes.py, tests/e2e/fakes_e2e_gateways.py), and the service as a child process
(`.venv/bin/python webhook.py`, or `gunicorn webhook:app -w N` with --gunicorn N) in a clean environment where
every variable of config.ENV_VARIABLES is set (empty = default) and every gateway, the worker and the admin API
are on. Request i is built from the seeds in bench/fuzz_seeds.py by an RNG seeded with (--seed, i), so a run is
reproducible; signed gateways get a correct signature for the mutated body most of the time, so the mutation
reaches the parser. Everything started here is stopped at the end, also on Ctrl-C or an error.

    .venv/bin/python bench/fuzz_webhook.py --count 10000 --seed 1
    .venv/bin/python bench/fuzz_webhook.py --gunicorn 2 --count 3000 --seed 2
    .venv/bin/python bench/fuzz_webhook.py --replay bench/results/fuzz-seed1.5xx.jsonl   # resend saved requests

Writes a markdown report to --out (default bench/results/fuzz-seed<S>[-gunicorn<N>].md) and beside it every 5xx
request (<stem>.5xx.jsonl), a minimized reproducer per distinct 5xx cause (<stem>.repro.jsonl) and the server log
(<stem>.server.log). Exit code 0 when no request got a 5xx and the server and its worker thread stayed up, else 1.
"""

from __future__ import annotations

import argparse
import base64
import copy
import gzip
import hashlib
import hmac
import http.client
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, unquote

import fuzz_seeds as seeds
import redis
from fuzz_seeds import SEEDS, Ctx, Draft, Seed
from harness import children_of

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from config import ENV_ALIASES, ENV_VARIABLES, MAY_BE_EMPTY, SYSTEM_PROMPT_FILE, Settings  # noqa: E402 (ROOT first)
from tests.e2e.fakes_e2e_gateways import FakeGraph, FakeMega, FakeTwilio  # noqa: E402
from tests.fakes import FakeEvolution, FakeGemini, FakeServer  # noqa: E402
from tests.redis_server import RedisServer, free_port  # noqa: E402

PYTHON = ROOT / ".venv" / "bin" / "python"
GUNICORN = ROOT / ".venv" / "bin" / "gunicorn"
RESULTS_DIR = ROOT / "bench" / "results"
SOURCE = ROOT  # where the service is run from (--source): the working tree, or a copy of it

BODY_LIMIT_BYTES = 2_000_000  # MAX_BODY_BYTES given to the server (MEDIA_MAX_BYTES keeps the limit at this)
MEDIA_MAX_BYTES = 1_000_000
DEBOUNCE_SECONDS = 0.5
READY_TIMEOUT_SECONDS = 60.0
SLOW_SECONDS = 2.0  # an answer slower than this is listed as slow
PRISTINE_SHARE = 0.12  # requests sent exactly as the seed built them (valid auth, no mutation)
CHAOS_SHARE = 0.05  # requests whose method or path is replaced
MAX_5XX_PRINTED = 5
MAX_PLAIN_URL = 4000  # longer request targets may be refused by the HTTP server itself (gunicorn: 414)
MINIMIZE_BUDGET = 250  # requests per distinct 5xx cause
WEBHOOK_TARGETS = frozenset({"evolution", "meta", "mega", "twilio"})


# ----- JSON with the values json.dumps cannot make ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Raw:
    """JSON text written verbatim: NaN, 1e999, 5000-digit numbers, nesting deeper than Python's recursion."""

    text: str


@dataclass(frozen=True, slots=True)
class DupKey:
    """A dict key written as `name` although `name` is already in the object (a duplicated key)."""

    name: str
    salt: int


def to_json(value: Any, *, ascii_only: bool = True) -> str:
    """Serialize a fuzzed tree; lone surrogates stay as \\udXXX escapes (ascii_only) or raw code points."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        items = (f"{_json_key(key, ascii_only)}:{to_json(item, ascii_only=ascii_only)}" for key, item in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(to_json(item, ascii_only=ascii_only) for item in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


def _json_key(key: Any, ascii_only: bool) -> str:
    return json.dumps(key.name if isinstance(key, DupKey) else str(key), ensure_ascii=ascii_only)


def encode_text(text: str) -> bytes:
    """UTF-8, with lone surrogates written as their (invalid) 3-byte forms instead of failing."""
    return text.encode("utf-8", "surrogatepass")


# ----- value pools -------------------------------------------------------------------------------------------

EDGE_STRINGS = (
    "\ud800",  # lone high surrogate
    "\udfff",  # lone low surrogate
    "oi \ud83d",  # half an emoji (high surrogate only)
    "\ude00 fim",  # the other half
    "\udc00\ud800",  # a pair in the wrong order
    "\x00",
    "a\x00b",
    "\u202e\u200fabc\u202c",  # RTL override and mark
    "\u200b\ufeff\u2060",  # zero-width characters and a BOM
    "\uffff\ufffe",
    "\U0010ffff",
    "👍🏽",
    "👨‍👩‍👧‍👦",
    "e\u0301" * 64,  # combining accents
    "\u2028\u2029",
    "\r\n\t\x0b\x0c",
    "٣٤٥",
    "１２３",
    "\x7f\x1b[31mred",
    "%s%n{0}{}",
    "' OR 1=1 --",
    "../../../etc/passwd",
    "<script>alert(1)</script>",
    "null",
    "true",
    "NaN",
    "-0",
    "1e999",
    " ",
    "",
    "5511987654321@s.whatsapp.net",
    "120363041234567890@g.us",
    "status@broadcast",
    "whatsapp:+5511987654321",
)
NUMBERS: tuple[Any, ...] = (
    0,
    -1,
    1,
    2**31,
    2**63,
    -(2**63) - 1,
    2**64,
    10**309,
    -(10**309),
    1.7976931348623157e308,
    5e-324,
    0.1,
    -0.0,
    Raw("1e400"),
    Raw("-1e400"),
    Raw("9" * 5000),
    Raw("-0"),
    Raw("1E+2"),
    Raw("0.00000000000000000000000000000001"),
)
NON_FINITE = (Raw("NaN"), Raw("Infinity"), Raw("-Infinity"), float("nan"), float("inf"))
RETYPE_POOL: tuple[Any, ...] = ("", "texto", "0", "true", 0, 1, -1, 3.14, True, False, None, [], {}, [1, "a"], {"a": 1})
INVALID_UTF8 = (b"\xff", b"\xfe\xfe", b"\xc0\x80", b"\xc3(", b"\xf8\x88\x80\x80\x80", b"\xf4\x90\x80\x80", b"\x80")
ENCODED_SURROGATES = (b"\xed\xa0\x80", b"\xed\xbf\xbf")  # decode with surrogatepass (json.loads on bytes does)


def _type_name(value: Any) -> str:
    return "raw" if isinstance(value, Raw) else type(value).__name__


def _retyped(rng: random.Random, value: Any) -> Any:
    choices = [v for v in RETYPE_POOL if type(v) is not type(value)] or list(RETYPE_POOL)
    pick = rng.choice(choices)
    return copy.deepcopy(pick)


def _edge_text(rng: random.Random, value: Any) -> str:
    edge = rng.choice(EDGE_STRINGS)
    if isinstance(value, str) and value and rng.random() < 0.6:
        at = rng.randrange(len(value) + 1)
        return value[:at] + edge + value[at:]
    return edge


def _huge_text(rng: random.Random) -> str:
    """A long text of about 1 kB to just over the body limit once written as JSON (escapes counted)."""
    size = rng.choice([1_000, 65_536, 300_000, 1_200_000, BODY_LIMIT_BYTES + 100_000])  # the last one: 413
    unit = rng.choice(["A", "ação ", "😀", "\u202e", "\\"])
    unit_bytes = max(len(encode_text(unit)), len(json.dumps(unit)) - 2)
    return unit * max(1, size // unit_bytes)


# ----- tree mutations ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class Slot:
    """A place in the tree: container[key] (dict key or list index), and its path for labels."""

    container: dict[Any, Any] | list[Any]
    key: Any
    path: str


def slots_of(tree: Any, limit: int = 3000) -> list[Slot]:
    """Every dict entry and list item in the tree (lists: their first 50 items), breadth first."""
    found: list[Slot] = []
    queue: deque[tuple[Any, str]] = deque([(tree, "$")])
    while queue and len(found) < limit:
        node, path = queue.popleft()
        if isinstance(node, dict):
            entries: list[tuple[Any, str]] = [(key, f"{path}.{_label_key(key)}") for key in node]
        elif isinstance(node, list):
            entries = [(i, f"{path}[{i}]") for i in range(min(len(node), 50))]
        else:
            continue
        for key, child_path in entries:
            found.append(Slot(node, key, child_path))
            queue.append((node[key], child_path))
    return found


def _label_key(key: Any) -> str:
    text = key.name if isinstance(key, DupKey) else str(key)
    return text.encode("unicode_escape").decode()[:24]


def _set(slot: Slot, value: Any) -> None:
    slot.container[slot.key] = value


def op_retype(rng: random.Random, slot: Slot) -> str:
    old = slot.container[slot.key]
    new = _retyped(rng, old)
    _set(slot, new)
    return f"{_type_name(old)}->{_type_name(new)}"


def op_delete(rng: random.Random, slot: Slot) -> str:
    del slot.container[slot.key]
    return ""


def op_unicode(rng: random.Random, slot: Slot) -> str:
    _set(slot, _edge_text(rng, slot.container[slot.key]))
    return ""


def op_huge_string(rng: random.Random, slot: Slot) -> str:
    text = _huge_text(rng)
    _set(slot, text)
    return f"{len(encode_text(text)) // 1000}kB"


def op_huge_number(rng: random.Random, slot: Slot) -> str:
    number = rng.choice(NUMBERS)
    _set(slot, number)
    return number.text[:12] if isinstance(number, Raw) else str(number)[:12]


def op_non_finite(rng: random.Random, slot: Slot) -> str:
    value = rng.choice(NON_FINITE)
    _set(slot, value)
    return value.text if isinstance(value, Raw) else str(value)


def op_nest(rng: random.Random, slot: Slot) -> str:
    value = slot.container[slot.key]
    depth = rng.randint(1, 6)
    for _ in range(depth):
        value = [value] if rng.random() < 0.5 else {"x": value}
    _set(slot, value)
    return str(depth)


def op_deep_nest(rng: random.Random, slot: Slot) -> str:
    depth = rng.choice([100, 900, 1_500, 20_000])
    inner = to_json(slot.container[slot.key]) if rng.random() < 0.5 else "1"
    _set(
        slot, Raw("[" * depth + inner + "]" * depth) if rng.random() < 0.7 else Raw('{"a":' * depth + "1" + "}" * depth)
    )
    return str(depth)


def op_big_array(rng: random.Random, slot: Slot) -> str:
    size = rng.choice([1_000, 10_000, 100_000])
    item = to_json(rng.choice([0, "x", None, {}, [], {"key": {"id": "x"}}]))
    _set(slot, Raw("[" + ",".join([item] * size) + "]"))
    return str(size)


def op_empty(rng: random.Random, slot: Slot) -> str:
    _set(slot, rng.choice(["", [], {}, 0]))
    return ""


def op_rename_key(rng: random.Random, slot: Slot) -> str:
    if not isinstance(slot.container, dict) or isinstance(slot.key, DupKey):
        return op_retype(rng, slot)
    old = str(slot.key)
    new = rng.choice([old.upper(), old.lower() + "_", "", " " + old, old + "\ud800", _edge_text(rng, old), "a" * 5000])
    items = [(new if key == slot.key else key, value) for key, value in slot.container.items()]
    slot.container.clear()
    slot.container.update(items)
    return ""


def op_dup_key(rng: random.Random, slot: Slot) -> str:
    if not isinstance(slot.container, dict) or isinstance(slot.key, DupKey):
        return op_retype(rng, slot)
    value = slot.container[slot.key]
    dup = _retyped(rng, value) if rng.random() < 0.7 else copy.deepcopy(value)
    name = slot.key.name if isinstance(slot.key, DupKey) else str(slot.key)
    if rng.random() < 0.5:  # the duplicate after the original: json.loads keeps the last one
        slot.container[DupKey(name, rng.getrandbits(32))] = dup
    else:
        items = [(DupKey(name, rng.getrandbits(32)), dup), *slot.container.items()]
        slot.container.clear()
        slot.container.update(items)
    return ""


def op_batch(rng: random.Random, slot: Slot) -> str:
    """Many copies of a list's dicts (messages, events, entries), each with fresh ids."""
    value = slot.container[slot.key]
    items = [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []
    if not items:
        return op_big_array(rng, slot)
    item = rng.choice(items)
    text = to_json(item)
    ids = [
        json.dumps(s.container[s.key]) for s in slots_of(item) if s.key == "id" and isinstance(s.container[s.key], str)
    ]
    copies = []
    for _ in range(rng.choice([20, 200, 1_000])):
        copy_text = text
        for old in ids:
            copy_text = copy_text.replace(old, json.dumps(f"3EB0{rng.getrandbits(72):018X}"))
        copies.append(copy_text)
    _set(slot, Raw("[" + ",".join(copies) + "]"))
    return str(len(copies))


TREE_OPS: dict[str, tuple[Callable[[random.Random, Slot], str], float]] = {
    "retype": (op_retype, 30),
    "delete": (op_delete, 15),
    "unicode": (op_unicode, 22),
    "huge_string": (op_huge_string, 2),
    "huge_number": (op_huge_number, 7),
    "non_finite": (op_non_finite, 6),
    "nest": (op_nest, 4),
    "deep_nest": (op_deep_nest, 1.5),
    "big_array": (op_big_array, 1.5),
    "empty": (op_empty, 5),
    "rename_key": (op_rename_key, 4),
    "dup_key": (op_dup_key, 4),
    "batch": (op_batch, 2),
}
ROOT_REPLACEMENTS: tuple[Any, ...] = (None, [], {}, "", 0, True, [None], [[]], "texto", Raw("NaN"))


def mutate_tree(rng: random.Random, tree: Any, count: int, log: list[str]) -> Any:
    """Apply `count` random operators to places in `tree` (changed in place where possible); returns the tree."""
    names = list(TREE_OPS)
    weights = [TREE_OPS[name][1] for name in names]
    for _ in range(count):
        if rng.random() < 0.03:
            tree = copy.deepcopy(rng.choice(ROOT_REPLACEMENTS)) if rng.random() < 0.6 else [tree, tree]
            log.append("root")
            continue
        places = slots_of(tree)
        if not places:
            tree = _retyped(rng, tree)
            log.append("retype@$")
            continue
        name = rng.choices(names, weights)[0]
        if name == "batch":
            lists = [s for s in places if isinstance(s.container[s.key], list)]
            places = lists or places
        slot = rng.choice(places)
        detail = TREE_OPS[name][0](rng, slot)
        log.append(f"{name}@{slot.path[:60]}" + (f"({detail})" if detail else ""))
    return tree


# ----- form (Twilio) mutations ---------------------------------------------------------------------------------

NUMBERISH = ("1e9", "-1", "abc", "１", "99999999999999999999", " 1", "1.5", "NaN", "", "0x10")


def mutate_form(rng: random.Random, pairs: list[tuple[str, str]], count: int, log: list[str]) -> list[tuple[str, str]]:
    pairs = list(pairs)
    for _ in range(count):
        op = rng.choice(["delete", "edge", "huge", "numberish", "dup", "rename", "extra", "empty"])
        if not pairs:
            op = "extra"
        at = rng.randrange(len(pairs)) if pairs else 0
        name = pairs[at][0] if pairs else ""
        if op == "delete":
            del pairs[at]
        elif op == "edge":
            pairs[at] = (name, _edge_text(rng, pairs[at][1]))
        elif op == "huge":
            pairs[at] = (name, _huge_text(rng))
        elif op == "numberish":
            pairs[at] = (rng.choice(["NumMedia", "Latitude", "Longitude", name]), rng.choice(NUMBERISH))
        elif op == "dup":
            pairs.insert(rng.choice([at, at + 1]), (name, _edge_text(rng, "")))
        elif op == "rename":
            pairs[at] = (rng.choice([name.lower(), name + "[]", "", _edge_text(rng, name)]), pairs[at][1])
        elif op == "extra":
            pairs.append(
                rng.choice(
                    [
                        ("MediaUrl0", "http://127.0.0.1:9/x"),
                        ("MessageStatus", "failed"),
                        ("ButtonText", _edge_text(rng, "ok")),
                        ("Latitude", "1"),
                        (_edge_text(rng, "k"), "v"),
                    ]
                )
            )
        else:
            pairs[at] = (name, "")
        log.append(f"form_{op}@{name.encode('unicode_escape').decode()[:20]}")
    return pairs


def encode_form(pairs: list[tuple[str, str]]) -> bytes:
    return "&".join(
        f"{quote_plus(encode_text(name), safe='')}={quote_plus(encode_text(value), safe='')}" for name, value in pairs
    ).encode()


# ----- byte mutations -------------------------------------------------------------------------------------------

# name -> what the server should then make of a JSON body: "invalid" (400), "valid" (as before), "unknown"
BYTE_OPS: dict[str, str] = {
    "truncate": "invalid",
    "invalid_utf8": "invalid",
    "encoded_surrogate": "unknown",
    "bom": "valid",
    "utf16": "valid",
    "utf32": "valid",
    "trailing_garbage": "invalid",
    "trailing_nul": "invalid",
    "leading_space": "valid",
    "empty": "invalid",
    "whitespace": "invalid",
    "scalar": "unknown",
    "random_bytes": "unknown",
    "deep_unclosed": "invalid",
    "deep_closed": "unknown",
    "json_in_string_twice": "unknown",
    "gzip": "invalid",
}


def mutate_bytes(rng: random.Random, body: bytes, op: str) -> bytes:
    if op == "truncate":
        return body[: rng.randrange(max(len(body) - 1, 1))]
    if op in ("invalid_utf8", "encoded_surrogate"):
        junk = rng.choice(INVALID_UTF8 if op == "invalid_utf8" else ENCODED_SURROGATES)
        quote_at = [i + 1 for i in range(len(body)) if body[i : i + 1] == b'"'][:200]
        at = rng.choice(quote_at) if quote_at and rng.random() < 0.8 else rng.randrange(1, max(len(body), 2))
        return body[:at] + junk + body[at:]
    if op == "bom":
        return b"\xef\xbb\xbf" + body
    if op in ("utf16", "utf32"):
        codec = rng.choice(["utf-16-le", "utf-16-be", "utf-16"] if op == "utf16" else ["utf-32-le", "utf-32"])
        return body.decode("utf-8", "surrogatepass").encode(codec, "surrogatepass")
    if op == "trailing_garbage":
        return body + rng.choice([b" xyz", b"}", b"]]", b",", b"{}"])
    if op == "trailing_nul":
        return body + b"\x00" * rng.randint(1, 8)
    if op == "leading_space":
        return b" \n\t\r" + body
    if op == "empty":
        return b""
    if op == "whitespace":
        return rng.choice([b" ", b"\n", b"\r\n\t "])
    if op == "scalar":
        return rng.choice([b"null", b"0", b'"x"', b"[]", b"{}", b"true", b"[null]", b"[[]]", b"NaN", b'""'])
    if op == "random_bytes":
        return bytes(rng.getrandbits(8) for _ in range(rng.choice([1, 16, 256, 4096])))
    if op == "deep_unclosed":
        return b"[" * rng.choice([1_000, 100_000])
    if op == "deep_closed":
        depth = rng.choice([2_000, 100_000])
        return b"[" * depth + b"]" * depth
    if op == "json_in_string_twice":
        return json.dumps(json.dumps(body.decode("utf-8", "surrogatepass"))).encode("utf-8", "surrogatepass")
    if op == "gzip":
        return gzip.compress(body)
    raise ValueError(op)


# ----- authentication ------------------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(claims_json: str, secret: str = seeds.WEBHOOK_JWT_SECRET, alg: str = "HS256") -> str:
    """An HS256 token over `claims_json` taken verbatim (so it may hold NaN or Infinity)."""
    head = _b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = _b64url(claims_json.encode())
    signature = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}." + ("" if alg == "none" else _b64url(signature))


JWT_GOOD = '{"exp": 4102444800, "iat": 1767225600, "instance": "loja-fuzz"}'
JWT_BAD_CLAIMS = (
    '{"exp": 1000000000}',  # expired
    '{"iat": 1767225600}',  # no exp
    '{"exp": "amanha"}',
    '{"exp": NaN}',
    '{"exp": Infinity}',
    '{"exp": 1e400}',
    '{"exp": [1]}',
    '{"exp": 4102444800, "nbf": Infinity}',
    '{"exp": 4102444800, "iat": "x"}',
    "[]",
    "not json",
)


def shared_token_auth(rng: random.Random, valid: bool, log: list[str]) -> tuple[list[tuple[str, str]], str]:
    """Headers and a query token for Evolution/Mega (WEBHOOK_TOKEN, or a JWT signed with WEBHOOK_JWT_SECRET)."""
    token = seeds.WEBHOOK_TOKEN
    if valid:
        mode = rng.choices(["bearer", "query", "jwt"], [0.85, 0.08, 0.07])[0]
        if mode == "query":
            return [], token
        if mode == "jwt":
            return [("Authorization", f"Bearer {make_jwt(JWT_GOOD)}")], ""
        scheme = rng.choice(["Bearer ", "bearer ", "BEARER  "])
        return [("Authorization", f"{scheme}{token}")], ""
    mode = rng.choice(["none", "wrong_bearer", "wrong_query", "jwt_claims", "jwt_secret", "jwt_none", "basic"])
    log.append(f"auth:{mode}")
    if mode == "none":
        return [], ""
    if mode == "wrong_query":
        return [], token[:-1] + "X"
    if mode == "jwt_claims":
        return [("Authorization", f"Bearer {make_jwt(rng.choice(JWT_BAD_CLAIMS))}")], ""
    if mode == "jwt_secret":
        return [("Authorization", f"Bearer {make_jwt(JWT_GOOD, secret='wrong')}")], ""
    if mode == "jwt_none":
        return [("Authorization", f"Bearer {make_jwt(JWT_GOOD, alg='none')}")], ""
    if mode == "basic":
        return [("Authorization", "Basic " + base64.b64encode(f"x:{token}".encode()).decode())], ""
    return [("Authorization", rng.choice([f"Bearer {token}x", "Bearer ", "Bearer", token, f"Bearer {token[:-1]}"]))], ""


def meta_signature(body: bytes, secret: str = seeds.META_APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def meta_auth(rng: random.Random, body: bytes, valid: bool, log: list[str]) -> list[tuple[str, str]]:
    if valid:
        signature = meta_signature(body)
        return [
            (
                "X-Hub-Signature-256",
                signature.upper().replace("SHA256=", "sha256=") if rng.random() < 0.1 else signature,
            )
        ]
    mode = rng.choice(["none", "wrong_secret", "truncated", "sha1", "other_body", "empty"])
    log.append(f"auth:{mode}")
    signature = {
        "none": "",
        "wrong_secret": meta_signature(body, "wrong"),
        "truncated": meta_signature(body)[:-2],
        "sha1": "sha1=" + hmac.new(seeds.META_APP_SECRET.encode(), body, hashlib.sha1).hexdigest(),
        "other_body": meta_signature(body + b" "),
        "empty": "sha256=",
    }[mode]
    return [("X-Hub-Signature-256", signature)] if signature else []


def twilio_signature(url: str, form: dict[str, str], token: str = seeds.TWILIO_AUTH_TOKEN) -> str:
    """Twilio's documented algorithm: base64(HMAC-SHA1(token, URL + each field name and value, sorted))."""
    data = url + "".join(name + form[name] for name in sorted(form))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def server_form(query: str, headers: list[tuple[str, str]], body: bytes) -> dict[str, str]:
    """The form fields the server will see (werkzeug's own parser, first value of each name), as it signs them."""
    from werkzeug.test import EnvironBuilder
    from werkzeug.wrappers import Request

    content_type = next((v for k, v in headers if k.lower() == "content-type"), None)
    builder = EnvironBuilder(method="POST", path="/webhook/twilio", query_string=query, data=body)
    environ = builder.get_environ()
    if content_type is None:
        environ.pop("CONTENT_TYPE", None)
    else:
        environ["CONTENT_TYPE"] = content_type
    request = Request(environ)
    return request.form.to_dict() if request.mimetype == "application/x-www-form-urlencoded" else {}


def twilio_auth(
    rng: random.Random, query: str, headers: list[tuple[str, str]], body: bytes, valid: bool, log: list[str]
) -> list[tuple[str, str]]:
    form = server_form(query, headers, body)
    url = f"{seeds.TWILIO_PUBLIC_URL}/webhook/twilio" + (f"?{query}" if query else "")
    if valid:
        return [("X-Twilio-Signature", twilio_signature(url, form))]
    mode = rng.choice(["none", "wrong_token", "http_url", "no_query", "extra_field"])
    log.append(f"auth:{mode}")
    signature = {
        "none": "",
        "wrong_token": twilio_signature(url, form, "wrong"),
        "http_url": twilio_signature(url.replace("https://", "http://"), form),
        "no_query": twilio_signature(url.split("?")[0] + "?x=1", form),
        "extra_field": twilio_signature(url, {**form, "Extra": "1"}),
    }[mode]
    return [("X-Twilio-Signature", signature)] if signature else []


def admin_auth(rng: random.Random, valid: bool, log: list[str]) -> list[tuple[str, str]]:
    if valid:
        return [("Authorization", f"Bearer {seeds.ADMIN_TOKEN}")]
    mode = rng.choice(["none", "wrong", "webhook_token", "basic"])
    log.append(f"auth:{mode}")
    value = {
        "none": "",
        "wrong": f"Bearer {seeds.ADMIN_TOKEN}x",
        "webhook_token": f"Bearer {seeds.WEBHOOK_TOKEN}",
        "basic": "Basic " + base64.b64encode(f"admin:{seeds.ADMIN_TOKEN}".encode()).decode(),
    }[mode]
    return [("Authorization", value)] if value else []


# ----- one request --------------------------------------------------------------------------------------------

JSON_CONTENT_TYPES = (
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=----fuzz",
    "multipart/form-data",
    "application/json; charset=utf-16",
    "application/json; charset=latin-1",
    "application/xml",
    "*/*",
    "application/json, text/html",
    "",
    None,  # no Content-Type at all
)
FORM_CONTENT_TYPES = (
    "application/json",
    "text/plain",
    "multipart/form-data; boundary=x",
    "application/x-www-form-urlencoded; charset=latin-1",
    "application/X-WWW-Form-Urlencoded",
    None,
)
CHAOS_METHODS = ("GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "PROPFIND", "get", "POST")
CHAOS_PATHS = (
    "/",
    "/webhook/",
    "/webhook//",
    "/webhook/meta/",
    "/webhook/twilio/x",
    "/webhook/%2e%2e/health",
    "/webhook/%00",
    "/webhook/%ff%fe",
    "/webhook/" + "a" * 3000,
    "/webhook/%F0%9F%91%8D",
    "/webhook/%ED%A0%80",
    "/webhook/messages.upsert/extra",
    "/admin/api/chats/",
    "/admin/api/chats/%00/pause",
    "/admin/api/chats/evolution::",
    "/admin/api/chats/evolution:%ED%A0%80:x",
    "/admin/api/chats/x:y:z/unknown",
    "/admin/api/chats/" + "evolution:a:" * 500,
    "/context/preview/",
    "/health/",
    "//health",
    "/favicon.ico",
    "*",
)
EXTRA_HEADERS = (
    ("X-Forwarded-For", "127.0.0.1, \x7f, ::1"),
    ("Content-Encoding", "gzip"),
    ("Expect", "100-continue"),
    ("Accept", "text/html;q=NaN"),
    ("User-Agent", "x" * 20_000),
    ("X-Fuzz", "é ü \x00"),
    ("Host", "[::1"),
    ("Authorization", f"Bearer {seeds.WEBHOOK_TOKEN}"),  # a second Authorization header when one is there
)
QUERY_JUNK = ("%zz=1", "a=%ff%fe", "b=%ED%A0%80", ";;&&=", "x=" + "y" * 6000, "token", "token=&token=", "c=1&c=2&c=3")


@dataclass(slots=True, kw_only=True)
class FuzzRequest:
    """One request as sent, with what the fuzzer did to it and the statuses it should get (None: any non-5xx)."""

    index: int
    seed: str
    target: str
    mutations: list[str]
    method: str
    url: str  # path and query, exactly as sent
    headers: list[tuple[str, str]]
    body: bytes
    expect: frozenset[int] | None = None

    @property
    def ops(self) -> list[str]:
        """Operator names without their places ("retype", "auth:none", "bytes:truncate", ...)."""
        return sorted({m.split("@")[0].split("(")[0] for m in self.mutations}) or ["pristine"]

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "seed": self.seed,
            "target": self.target,
            "mutations": self.mutations,
            "method": self.method,
            "url": self.url,
            "headers": [[name, value] for name, value in self.headers],
            "body_b64": base64.b64encode(self.body).decode(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FuzzRequest:
        return cls(
            index=int(data.get("index", -1)),
            seed=str(data.get("seed", "replay")),
            target=str(data.get("target", "")),
            mutations=list(data.get("mutations", [])),
            method=data["method"],
            url=data["url"],
            headers=[(name, value) for name, value in data["headers"]],
            body=base64.b64decode(data["body_b64"]),
        )


def pick_seed(rng: random.Random) -> Seed:
    return rng.choices(SEEDS, [seed.weight for seed in SEEDS])[0]


def _mutation_count(rng: random.Random) -> int:
    return rng.choices([1, 2, 3, 5], [0.55, 0.25, 0.12, 0.08])[0]


AUTH_QUERY_FIELDS = frozenset({"token", "hub.verify_token"})


def _encode_query(rng: random.Random, query: dict[str, str], mutate: bool, log: list[str]) -> str:
    """The query string; with `mutate`, one value may change (a changed token is logged as "auth:query_value")."""
    pairs = list(query.items())
    if mutate and pairs and rng.random() < 0.6:
        at = rng.randrange(len(pairs))
        name, value = pairs[at]
        new = rng.choice([_edge_text(rng, value), rng.choice(NUMBERISH), "9" * 5000, ""])
        if new != value:
            pairs[at] = (name, new)
            log.append(f"auth:query_value@{name}" if name in AUTH_QUERY_FIELDS else f"query_value@{name}")
    text = "&".join(f"{quote(encode_text(k), safe='')}={quote(encode_text(v), safe='')}" for k, v in pairs)
    if mutate and rng.random() < 0.2:
        junk = rng.choice(QUERY_JUNK)
        text = f"{text}&{junk}" if text else junk
        log.append(f"query_junk@{junk[:12]}")
    return text


def _body_of(rng: random.Random, seed: Seed, draft: Draft, pristine: bool, log: list[str]) -> tuple[bytes, str]:
    """The body bytes and what they are ("valid", "invalid", "unknown") for the seed's kind of body."""
    if seed.body == "json":
        # A body that is a JSON string holding the event: mutate the event inside, then wrap it again.
        in_string = isinstance(draft.payload, str)
        tree = json.loads(draft.payload) if in_string else copy.deepcopy(draft.payload)
        if not pristine and rng.random() < 0.85:
            tree = mutate_tree(rng, tree, _mutation_count(rng), log)
        ascii_only = pristine or rng.random() < 0.8
        if not ascii_only:
            log.append("raw_unicode")
        text = to_json(tree, ascii_only=ascii_only)
        body = encode_text(json.dumps(text, ensure_ascii=ascii_only) if in_string else text)
    elif seed.body == "form":
        pairs = draft.payload
        if not pristine and rng.random() < 0.85:
            pairs = mutate_form(rng, pairs, _mutation_count(rng), log)
        body = encode_form(pairs)
    else:
        if pristine or rng.random() >= 0.1:
            return b"", "valid"
        log.append("unexpected_body")
        return rng.choice([b"{}", b'{"minutes": 5}', b"\xff\xfe", b"x" * 1000]), "unknown"
    state = "valid"
    if not pristine and rng.random() < 0.15:
        op = rng.choice(list(BYTE_OPS))
        if seed.body == "form" and op in ("utf16", "utf32", "bom", "json_in_string_twice", "deep_closed"):
            op = "invalid_utf8"
        body = mutate_bytes(rng, body, op)
        log.append(f"bytes:{op}")
        state = BYTE_OPS[op] if seed.body == "json" else "unknown"
    return body, state


def _content_type(rng: random.Random, seed: Seed, pristine: bool, log: list[str]) -> tuple[str | None, bool]:
    """(Content-Type or None, whether it was changed from the seed's own)."""
    own = {"json": "application/json", "form": "application/x-www-form-urlencoded"}.get(seed.body)
    if own is None or pristine or rng.random() < 0.88:
        return own, False
    other = rng.choice(JSON_CONTENT_TYPES if seed.body == "json" else FORM_CONTENT_TYPES)
    log.append(f"ctype@{other}")
    return other, True


def is_form_type(content_type: str | None) -> bool:
    return content_type is not None and content_type.lower().startswith("application/x-www-form-urlencoded")


def expected_statuses(
    seed: Seed,
    *,
    auth_ok: bool,
    pristine_tree: bool,
    state: str,
    content_type: str | None,
    ctype_changed: bool,
    odd: bool,
    size: int,
) -> frozenset[int] | None:
    """What a correct server answers, where that is clear; None = any status below 500 is acceptable.

    JSON gateways read the body whatever its Content-Type; Twilio reads only a form-encoded body (its signature
    then covers no fields, so an unsigned-looking request is still correctly signed and gets 400)."""
    if odd:  # chaos method/path, extra headers, long queries: only "no 5xx" is checked
        return None
    if seed.target in WEBHOOK_TARGETS:
        if size > BODY_LIMIT_BYTES:
            return frozenset({413})
        if not auth_ok:
            return frozenset({401})
        if state == "invalid":
            return frozenset({400})
        if seed.target == "twilio" and ctype_changed and not is_form_type(content_type):
            return frozenset({400})
        return seed.ok if pristine_tree and state == "valid" else None
    if seed.target in ("admin", "knowledge"):
        if not auth_ok:
            return frozenset({401})
        return seed.ok if pristine_tree and state == "valid" and not ctype_changed else None
    if seed.target == "handshake":
        if not auth_ok:
            return frozenset({403})
        return seed.ok if pristine_tree else None
    return seed.ok


def build_request(run_seed: int, index: int) -> FuzzRequest:
    """Request `index` of the run: always the same bytes for the same (run_seed, index)."""
    rng = random.Random(f"{run_seed}:{index}")
    seed = pick_seed(rng)
    draft = seed.build(Ctx(rng, index))
    pristine = rng.random() < PRISTINE_SHARE
    log: list[str] = []
    body, state = _body_of(rng, seed, draft, pristine, log)
    pristine_tree = not any(not m.startswith(("bytes:", "raw_unicode")) for m in log)  # no tree or form operator
    content_type, ctype_changed = _content_type(rng, seed, pristine, log)
    headers: list[tuple[str, str]] = [("User-Agent", "fuzz-webhook/1")]
    if content_type is not None:
        headers.append(("Content-Type", content_type))
    auth_ok = pristine or rng.random() < 0.9
    query = dict(draft.query)
    if seed.target == "handshake" and not auth_ok:
        query["hub.verify_token"] = rng.choice(["", "wrong", seeds.META_VERIFY_TOKEN + " "])
        log.append("auth:verify_token")
    if seed.target in ("evolution", "mega"):
        auth_headers, query_token = shared_token_auth(rng, auth_ok, log)
        headers += auth_headers
        if query_token:
            query["token"] = query_token
    query_string = _encode_query(rng, query, not pristine and rng.random() < 0.25, log)
    auth_ok = auth_ok and not any(m.startswith("auth:query_value") for m in log)
    pristine_tree = pristine_tree and not any(m.startswith("query_value") for m in log)
    if seed.target == "meta":
        headers += meta_auth(rng, body, auth_ok, log)
    elif seed.target == "twilio":
        headers += twilio_auth(rng, query_string, headers, body, auth_ok, log)
    elif seed.target in ("admin", "knowledge"):
        headers += admin_auth(rng, auth_ok, log)
    method, path = seed.method, draft.path
    odd = False
    if not pristine and rng.random() < CHAOS_SHARE:
        odd = True
        if rng.random() < 0.5:
            method = rng.choice(CHAOS_METHODS)
            log.append(f"chaos_method@{method}")
        else:
            path = rng.choice(CHAOS_PATHS)
            log.append(f"chaos_path@{path[:30]}")
    if not pristine and rng.random() < 0.04:
        headers.append(rng.choice(EXTRA_HEADERS))
        log.append(f"header@{headers[-1][0]}")
        odd = True
    url = path + (f"?{query_string}" if query_string and path != "*" else "")
    odd = odd or len(url) > MAX_PLAIN_URL
    expect = expected_statuses(
        seed,
        auth_ok=auth_ok,
        pristine_tree=pristine_tree,
        state=state,
        content_type=content_type,
        ctype_changed=ctype_changed,
        odd=odd,
        size=len(body),
    )
    return FuzzRequest(
        index=index,
        seed=seed.name,
        target=seed.target,
        mutations=log,
        method=method,
        url=url,
        headers=headers,
        body=body,
        expect=expect,
    )


# ----- sending ---------------------------------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class Outcome:
    """What came back for one request (the request itself is kept only for 5xx)."""

    index: int
    seed: str
    target: str
    ops: list[str]
    mutations: list[str]
    method: str
    url: str
    size: int
    status: int | None
    error: str
    started: float
    elapsed: float
    expect: frozenset[int] | None
    answer: str  # the first 300 bytes of the answer

    @property
    def unexpected(self) -> bool:
        return self.status is not None and self.expect is not None and self.status not in self.expect


def send(host: str, port: int, request: FuzzRequest, timeout: float) -> tuple[int | None, bytes, str]:
    """(status or None, answer body, error text): one connection per request, the bytes exactly as built."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.putrequest(request.method, request.url, skip_host=False, skip_accept_encoding=True)
        for name, value in request.headers:
            conn.putheader(name, value.encode("latin-1", "replace"))
        conn.putheader("Content-Length", str(len(request.body)))
        conn.putheader("Connection", "close")
        try:
            conn.endheaders(request.body or None)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer (413, 400) before it has read everything: read that answer below
        response = conn.getresponse()
        return response.status, response.read(), ""
    except (OSError, http.client.HTTPException) as exc:
        return None, b"", f"{type(exc).__name__}: {exc}"[:200]
    except (ValueError, UnicodeError) as exc:  # the client refused the request (a fuzzer bug, not the server's)
        return None, b"", f"client {type(exc).__name__}: {exc}"[:200]
    finally:
        conn.close()


def get_health(url: str, timeout: float = 5.0) -> tuple[int | None, Any]:
    """(status, decoded body) of GET /health, (None, error text) when it does not answer."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", "/health")
        response = conn.getresponse()
        data = response.read()
        try:
            return response.status, json.loads(data)
        except ValueError:
            return response.status, data[:300].decode("latin-1")
    except (OSError, http.client.HTTPException) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


# ----- the processes -----------------------------------------------------------------------------------------


class FakeHosts:
    """Every outbound service the server calls, as local fakes in this process; their own crashes are counted."""

    def __init__(self) -> None:
        # The stdlib listen backlog is 5: 16 reply threads would overflow it (bench/harness.py does the same).
        ThreadingHTTPServer.request_queue_size = 256
        self.gemini = FakeGemini()
        self.evolution = FakeEvolution()
        self.graph = FakeGraph()
        self.twilio = FakeTwilio()
        self.mega = FakeMega()
        self.errors: Counter[str] = Counter()
        for name, fake in self.all().items():
            fake.server.handle_error = self._error_counter(name)  # type: ignore[method-assign]

    def _error_counter(self, name: str) -> Callable[[Any, Any], None]:
        def handle_error(request: Any, client_address: Any) -> None:
            self.errors[f"{name}: {sys.exc_info()[0].__name__ if sys.exc_info()[0] else '?'}"] += 1

        return handle_error

    def all(self) -> dict[str, FakeServer]:
        return {
            "gemini": self.gemini,
            "evolution": self.evolution,
            "graph": self.graph,
            "twilio": self.twilio,
            "mega": self.mega,
        }

    def env(self) -> dict[str, str]:
        return {
            "GEMINI_API_KEY": "fuzz-gemini-key",
            "GEMINI_BASE_URL": self.gemini.url,
            "EVOLUTION_API": self.evolution.url,
            "AUTHENTICATION_API_KEY": "fuzz-evolution-apikey",
            "META_APP_SECRET": seeds.META_APP_SECRET,
            "META_VERIFY_TOKEN": seeds.META_VERIFY_TOKEN,
            "META_ACCESS_TOKEN": seeds.META_ACCESS_TOKEN,
            "META_PHONE_NUMBER_ID": seeds.META_PHONE_NUMBER_ID,
            "META_GRAPH_URL": self.graph.url,
            "MEGA_API_BASE_URL": self.mega.url,
            "MEGA_INSTANCE_ID": seeds.MEGA_INSTANCE,
            "MEGA_API_TOKEN": seeds.MEGA_API_TOKEN,
            "TWILIO_ACCOUNT_SID": seeds.TWILIO_ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": seeds.TWILIO_AUTH_TOKEN,
            "TWILIO_WHATSAPP_FROM": seeds.TWILIO_WHATSAPP_FROM,
            "TWILIO_PUBLIC_URL": seeds.TWILIO_PUBLIC_URL,
            "TWILIO_API_URL": self.twilio.url,
        }

    def summary(self) -> dict[str, int]:
        received = {name: fake.received() for name, fake in self.all().items()}
        return {
            "gemini generateContent": sum(":generateContent" in r.path for r in received["gemini"]),
            "evolution sendText": sum("/message/sendText/" in r.path for r in received["evolution"]),
            "evolution media": sum("/chat/getBase64FromMediaMessage/" in r.path for r in received["evolution"]),
            "graph messages": sum(r.method == "POST" for r in received["graph"]),
            "graph media": sum(r.method == "GET" for r in received["graph"]),
            "twilio Messages": sum(r.path.endswith("/Messages.json") for r in received["twilio"]),
            "mega sendMessage": sum(r.path.startswith("/rest/sendMessage/") for r in received["mega"]),
            "mega media": sum("/downloadMediaMessage/" in r.path for r in received["mega"]),
        }

    def close(self) -> None:
        for fake in self.all().values():
            fake.close()


def service_env(port: int, redis_url: str, fakes: FakeHosts, knowledge_dir: Path) -> dict[str, str]:
    """A clean environment as tests/e2e/conftest.py's Harness.env builds it: every variable the service reads is
    set (empty = its default; customer texts that may be empty get their default text), then ours."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARIABLES and not k.startswith("GUNICORN")}
    env.update({name: "" for name in [*ENV_VARIABLES, *ENV_ALIASES]})
    defaults = Settings()
    for name, (attr, _) in ENV_VARIABLES.items():
        if attr in MAY_BE_EMPTY:
            env[name] = getattr(defaults, attr)
    env[SYSTEM_PROMPT_FILE] = ""
    env.update(fakes.env())
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "LOG_LEVEL": "INFO",
            "WEBHOOK_TOKEN": seeds.WEBHOOK_TOKEN,
            "WEBHOOK_JWT_SECRET": seeds.WEBHOOK_JWT_SECRET,
            "ADMIN_TOKEN": seeds.ADMIN_TOKEN,
            "CACHE_REDIS_ENABLED": "true",
            "CACHE_REDIS_URI": redis_url,
            "CACHE_REDIS_PREFIX_KEY": "wa_fuzz",
            "DEBOUNCE_SECONDS": str(DEBOUNCE_SECONDS),
            "WORKER_ENABLED": "true",
            "HANDOFF_NOTIFY_URL": "",
            "KNOWLEDGE_DIR": str(knowledge_dir),
            "MAX_BODY_BYTES": str(BODY_LIMIT_BYTES),
            "MEDIA_MAX_BYTES": str(MEDIA_MAX_BYTES),
            # Not paced: the fuzzer checks what gets answered, not how fast one number may send.
            "OUTBOUND_RATE_PER_SECOND_EVOLUTION": "0",
            "OUTBOUND_RATE_PER_SECOND_META": "0",
            "OUTBOUND_RATE_PER_SECOND_TWILIO": "0",
            "OUTBOUND_RATE_PER_SECOND_MEGA": "0",
            "OUTBOUND_CUSTOMER_GAP_SECONDS": "0",
        }
    )
    return env


class Stack:
    """redis-server, the fakes and the service; `stop()` ends only what `start()` started."""

    def __init__(self, workdir: Path, *, gunicorn: int, python: Path) -> None:
        self.workdir = workdir
        self.gunicorn = gunicorn
        self.python = python
        self.port = free_port()
        self.log_path = workdir / "server.log"
        self.redis: RedisServer | None = None
        self.fakes: FakeHosts | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def label(self) -> str:
        return f"gunicorn webhook:app -w {self.gunicorn}" if self.gunicorn else "python webhook.py"

    def start(self) -> Stack:
        self.redis = RedisServer(self.workdir / "redis").start()
        self.fakes = FakeHosts()
        knowledge = self.workdir / "knowledge"
        shutil.copytree(ROOT / "tests" / "fixtures" / "knowledge", knowledge)
        env = service_env(self.port, self.redis.url, self.fakes, knowledge)
        self._log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self._argv(),
            cwd=SOURCE,
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so stop() reaches gunicorn's workers too
        )
        self._wait_ready()
        return self

    def _argv(self) -> list[str]:
        if not self.gunicorn:
            return [str(self.python), "webhook.py"]
        config = self.workdir / "gunicorn_fuzz.conf.py"
        config.write_text("# empty: every option is on the command line\n")
        bind = f"127.0.0.1:{self.port}"
        return [str(GUNICORN), "webhook:app", "-c", str(config), "-w", str(self.gunicorn), "-b", bind]

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.time() + READY_TIMEOUT_SECONDS
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            status, _ = get_health(self.url, timeout=1)
            if status == 200 and (not self.gunicorn or len(children_of(self.proc.pid)) >= self.gunicorn):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.label} did not answer /health in {READY_TIMEOUT_SECONDS:.0f}s")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_text(self, offset: int = 0, end: int | None = None) -> str:
        """The server log from byte `offset` to `end` (default: all of it so far)."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                return fh.read(-1 if end is None else max(end - offset, 0)).decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def flush_redis(self) -> None:
        assert self.redis is not None
        client = redis.Redis(port=self.redis.port)
        try:
            client.flushall()
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    pass
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the group of the child started here (leftover workers)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self.fakes is not None:
            self.fakes.close()
            self.fakes = None
        if self.redis is not None:
            self.redis.stop()
            self.redis = None


# ----- the server log --------------------------------------------------------------------------------------------

# python webhook.py: "2026-01-15 10:20:30,123 ERROR [pid] name: msg"; gunicorn: "[2026-01-15 10:20:30 +0000] [pid]"
_STAMP = re.compile(r"^\[?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:,(\d{3}))?(?: ([+-]\d{4}))?\]?")
_LEVEL = re.compile(r"\b(DEBUG|INFO|WARNING|ERROR|CRITICAL)\b")
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


@dataclass(slots=True)
class LogRecord:
    at: float  # the timestamp: the record was written in [at, at + resolution)
    level: str
    lines: list[str]
    resolution: float = 0.001  # gunicorn's format has whole seconds

    @property
    def head(self) -> str:
        return self.lines[0]

    @property
    def has_traceback(self) -> bool:
        return any(line.startswith("Traceback") for line in self.lines)

    @property
    def request_path(self) -> str | None:
        match = re.search(r"unexpected error on (\S+)", self.head)
        return match.group(1) if match else None


def parse_log(text: str) -> list[LogRecord]:
    """Log records: a stamped line and the unstamped lines after it (a traceback)."""
    records: list[LogRecord] = []
    for line in text.splitlines():
        match = _STAMP.match(line)
        if match:
            when = match.group(1) + "," + (match.group(2) or "000")
            zone = match.group(3)
            if zone:
                at = datetime.strptime(f"{when} {zone}", "%Y-%m-%d %H:%M:%S,%f %z").timestamp()
            else:
                at = datetime.strptime(when, "%Y-%m-%d %H:%M:%S,%f").timestamp()
            level = _LEVEL.search(line[match.end() : match.end() + 40])
            resolution = 0.001 if match.group(2) else 1.0
            records.append(LogRecord(at, level.group(1) if level else "", [line], resolution))
        elif records:
            records[-1].lines.append(line)
        else:
            records.append(LogRecord(0.0, "", [line]))
    return records


def _short_file(path: str) -> str:
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1]
    if _is_ours(path):
        return str(Path(path).resolve().relative_to(SOURCE.resolve()))
    return path.rsplit("/", 1)[-1]


def _is_ours(path: str) -> bool:
    return "site-packages" not in path and Path(path).resolve().is_relative_to(SOURCE.resolve())


@dataclass(frozen=True, slots=True)
class Cause:
    """What raised: the exception type, the innermost frame of our code and the innermost frame overall."""

    exception: str
    ours: str
    innermost: str

    @property
    def key(self) -> str:
        return f"{self.exception} in {self.ours} (raised in {self.innermost})"


def cause_of(record: LogRecord) -> tuple[Cause, list[str]] | None:
    """The cause of a logged traceback and its readable summary lines (exception lines and our frames)."""
    if not record.has_traceback:
        return None
    last = max(i for i, line in enumerate(record.lines) if line.startswith("Traceback"))
    block = record.lines[last:]
    frames = [m.groups() for m in (_FRAME.search(line) for line in block) if m]
    exception_lines = [
        line
        for line in record.lines
        if line and not line.startswith((" ", "Traceback", "During handling", "The above"))
    ][1:]
    final = exception_lines[-1] if exception_lines else "?"
    ours = [f for f in frames if _is_ours(f[0])]
    inner = frames[-1] if frames else ("?", "0", "?")
    our_inner = ours[-1] if ours else inner
    cause = Cause(
        exception=final.split(":", 1)[0],
        ours=f"{_short_file(our_inner[0])}:{our_inner[2]}",
        innermost=f"{_short_file(inner[0])}:{inner[2]}",
    )
    summary = [f"  {_short_file(f[0])}:{f[1]} in {f[2]}" for f in ours[-6:]]
    if inner not in ours:
        summary.append(f"  {_short_file(inner[0])}:{inner[1]} in {inner[2]}")
    summary += [f"  {line[:300]}" for line in exception_lines[-3:]]
    return cause, summary


def match_causes(outcomes: list[Outcome], records: list[LogRecord]) -> dict[int, LogRecord]:
    """Request index -> the logged 500 traceback it most likely produced: one written while the request was in
    flight, on the same path if there is one. Requests are taken by the time their answer came, each taking the
    earliest such traceback left, so two failures in the same second are not swapped."""
    candidates = [r for r in records if r.request_path is not None and r.has_traceback]
    used: set[int] = set()
    matched: dict[int, LogRecord] = {}
    for outcome in sorted(outcomes, key=lambda o: o.started + o.elapsed):
        path = unquote(outcome.url.split("?", 1)[0], errors="replace")
        end = outcome.started + outcome.elapsed + 0.05
        window = [
            (i, r)
            for i, r in enumerate(candidates)
            if i not in used and r.at <= end and r.at + r.resolution >= outcome.started - 0.05
        ]
        pool = [(i, r) for i, r in window if r.request_path == path] or window
        if pool:
            i, record = min(pool, key=lambda item: item[1].at)
            used.add(i)
            matched[outcome.index] = record
    return matched


# ----- the run ---------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class RunResult:
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False


def run_requests(
    stack: Stack, requests: Iterable[FuzzRequest], count: int, args: argparse.Namespace, sink: Path
) -> RunResult:
    """Send the requests `concurrency` at a time; every 5xx request goes to `sink` (JSONL) at once."""
    result = RunResult()
    lock = threading.Lock()
    sink.parent.mkdir(parents=True, exist_ok=True)
    sink_file = open(sink, "w", encoding="utf-8")
    host, port = "127.0.0.1", stack.port

    def one(request: FuzzRequest) -> Outcome:
        started = time.time()
        status, answer, error = send(host, port, request, args.timeout)
        outcome = Outcome(
            index=request.index,
            seed=request.seed,
            target=request.target,
            ops=request.ops,
            mutations=request.mutations,
            method=request.method,
            url=request.url[:160],
            size=len(request.body),
            status=status,
            error=error,
            started=started,
            elapsed=time.time() - started,
            expect=request.expect,
            answer=answer[:300].decode("utf-8", "replace"),
        )
        if status is not None and status >= 500:
            with lock:
                if not sink_file.closed:  # closed when Ctrl-C ended the run while this request was in flight
                    record = request.to_json() | {"status": status, "answer": outcome.answer, "at": started}
                    sink_file.write(json.dumps(record) + "\n")
                    sink_file.flush()
        return outcome

    started = time.time()
    pool = ThreadPoolExecutor(max_workers=args.concurrency, thread_name_prefix="fuzz")
    try:
        pending = set()
        done_count = 0
        for request in requests:
            pending.add(pool.submit(one, request))
            if len(pending) >= args.concurrency * 4:
                finished = next(as_completed(pending))
                pending.discard(finished)
                result.outcomes.append(finished.result())
                done_count += 1
                _progress(done_count, count, started, result.outcomes)
        for finished in as_completed(pending):
            result.outcomes.append(finished.result())
            done_count += 1
            _progress(done_count, count, started, result.outcomes)
    except KeyboardInterrupt:
        result.interrupted = True
        print("\ninterrupted: stopping (Ctrl-C again to force)", file=sys.stderr)
    finally:
        pool.shutdown(wait=not result.interrupted, cancel_futures=True)
        with lock:
            sink_file.close()
    result.seconds = time.time() - started
    return result


def _progress(done: int, total: int, started: float, outcomes: list[Outcome]) -> None:
    if done % 1000 and done != total:
        return
    errors = sum(1 for o in outcomes if o.status is not None and o.status >= 500)
    rate = done / max(time.time() - started, 1e-9)
    print(f"  {done}/{total} sent, {errors} 5xx, {rate:.0f} req/s", file=sys.stderr)


def drain(stack: Stack, timeout: float) -> dict[str, Any]:
    """Wait until the worker has answered what was buffered (or `timeout`); returns the last /health body."""
    deadline = time.time() + timeout
    body: Any = {}
    while time.time() < deadline:
        status, body = get_health(stack.url)
        if (
            status == 200
            and isinstance(body, dict)
            and not body.get("chats_pending")
            and not body.get("chats_in_progress")
        ):
            break
        time.sleep(0.5)
    return body if isinstance(body, dict) else {}


def final_health(stack: Stack, samples: int) -> list[tuple[int | None, Any]]:
    """/health a few times (under gunicorn each answer comes from one worker process)."""
    return [get_health(stack.url) for _ in range(samples)]


# ----- minimizing a 5xx --------------------------------------------------------------------------------------------


def _parse_body(request: FuzzRequest) -> tuple[str, Any] | None:
    """("json", tree) or ("form", pairs) for a body we know how to shrink by its structure; None otherwise."""
    if request.target == "twilio":
        form = server_form(request.url.partition("?")[2], request.headers, request.body)
        return ("form", list(form.items())) if form else None
    try:
        return "json", json.loads(request.body)
    except (ValueError, RecursionError):
        return None


def _resigned(request: FuzzRequest, body: bytes) -> list[tuple[str, str]]:
    """The request's headers for a new body: a signature that was valid for the old body is made valid again."""
    headers = list(request.headers)
    if request.target == "meta":
        old = meta_signature(request.body)
        return [
            (k, meta_signature(body) if k == "X-Hub-Signature-256" and v[7:].strip().lower() == old[7:] else v)
            for k, v in headers
        ]
    if request.target == "twilio":
        query = request.url.partition("?")[2]
        url = f"{seeds.TWILIO_PUBLIC_URL}/webhook/twilio" + (f"?{query}" if query else "")
        old = twilio_signature(url, server_form(query, headers, request.body))
        new = twilio_signature(url, server_form(query, headers, body))
        return [(k, new if k == "X-Twilio-Signature" and v == old else v) for k, v in headers]
    return headers


def _with_body(request: FuzzRequest, body: bytes) -> FuzzRequest:
    return FuzzRequest(
        index=request.index,
        seed=request.seed,
        target=request.target,
        mutations=["minimized"],
        method=request.method,
        url=request.url,
        headers=_resigned(request, body),
        body=body,
    )


def smaller_bodies(request: FuzzRequest) -> Iterator[bytes]:
    """Bodies one step smaller: by structure when the body parses (JSON tree, form fields), else by bytes."""
    parsed = _parse_body(request)
    if parsed is None:
        body, size = request.body, len(request.body)
        if size > 1:
            yield body[: size // 2]
            yield body[size // 2 :]
        step = max(size // 8, 1)
        for at in range(0, size, step) if size >= 16 else ():
            yield body[:at] + body[at + step :]
        return
    kind, value = parsed
    if kind == "form":
        for pairs in _smaller_forms(value):
            yield encode_form(pairs)
        return
    for tree in _smaller_trees(value):
        yield encode_text(json.dumps(tree, separators=(",", ":")))


def _smaller_forms(pairs: list[tuple[str, str]]) -> Iterator[list[tuple[str, str]]]:
    for at in range(len(pairs)):
        yield pairs[:at] + pairs[at + 1 :]
    for at, (name, text) in enumerate(pairs):
        if len(text) > 8:
            yield pairs[:at] + [(name, text[: len(text) // 2])] + pairs[at + 1 :]


def _smaller_trees(value: Any) -> Iterator[Any]:
    """Whole-body stand-ins, then the tree with one entry removed, then with one long text halved."""
    for stand_in in ({}, []):
        if value != stand_in:
            yield stand_in
    for slot in slots_of(value, limit=400):
        trimmed = copy.deepcopy(value)
        place = _follow(trimmed, slot.path)
        if place is not None:
            del place[0][place[1]]
            yield trimmed
    for slot in slots_of(value, limit=400):
        old = slot.container[slot.key]
        if isinstance(old, str) and len(old) > 8:
            for half in (old[: len(old) // 2], old[len(old) // 2 :]):
                shorter = copy.deepcopy(value)
                place = _follow(shorter, slot.path)
                if place is not None:
                    place[0][place[1]] = half
                    yield shorter


def _follow(tree: Any, path: str) -> tuple[Any, Any] | None:
    """(container, key) named by a slot path in a copy of the tree it came from."""
    for slot in slots_of(tree, limit=400):
        if slot.path == path:
            return slot.container, slot.key
    return None


def reproduces(stack: Stack, request: FuzzRequest, cause: Cause, timeout: float) -> bool:
    """Send `request` alone on a flushed Redis: True when it gets a 5xx whose logged traceback has `cause`."""
    stack.flush_redis()
    offset = stack.log_size()
    status, _, _ = send("127.0.0.1", stack.port, request, timeout)
    if status is None or status < 500:
        return False
    for _ in range(20):  # the traceback is written just before the answer; give the log a moment
        for record in parse_log(stack.log_text(offset)):
            found = cause_of(record) if record.request_path is not None else None
            if found is not None and found[0] == cause:
                return True
        time.sleep(0.05)
    return False


def minimize(stack: Stack, request: FuzzRequest, cause: Cause, timeout: float) -> tuple[FuzzRequest | None, int]:
    """The smallest request found (greedy, at most MINIMIZE_BUDGET sends) that still fails with `cause`, and how
    many sends that took; None when the original does not fail on its own."""
    sent = 1
    if not reproduces(stack, request, cause, timeout):
        return None, sent
    best = request
    improved = True
    while improved and sent < MINIMIZE_BUDGET:
        improved = False
        for body in smaller_bodies(best):
            candidate = _with_body(best, body)
            sent += 1
            if reproduces(stack, candidate, cause, timeout):
                best, improved = candidate, True
                break
            if sent >= MINIMIZE_BUDGET:
                break
    return best, sent


# ----- the report ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class CauseReport:
    cause: Cause
    summary: list[str]
    outcomes: list[Outcome] = field(default_factory=list)
    repro: FuzzRequest | None = None
    repro_note: str = ""


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def request_text(request: FuzzRequest, limit: int = 1500) -> str:
    """A readable request: the request line, the headers that matter, the body (escaped where not printable)."""
    lines = [f"{request.method} {request.url[:300]}"]
    lines += [f"{name}: {value[:200]}" for name, value in request.headers if name.lower() != "user-agent"]
    body = request.body.decode("utf-8", "backslashreplace")
    if len(body) > limit:
        body = body[:limit] + f"... ({len(request.body)} bytes)"
    return "\n".join([*lines, "", body])


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [
        "| " + " | ".join(str(cell).replace("|", "\\|").replace("\n", " ") for cell in row) + " |" for row in rows
    ]
    return lines


@dataclass(slots=True, kw_only=True)
class Findings:
    """Everything the report shows about one run."""

    run: RunResult
    causes: list[CauseReport]
    unknown_5xx: list[Outcome]
    matched: dict[int, LogRecord]
    health: list[tuple[int | None, Any]]
    drained: dict[str, Any]
    run_log: str  # the server log up to the end of the run (before minimizing)
    minimize_tracebacks: int = 0

    @property
    def server_errors(self) -> list[Outcome]:
        return [o for o in self.run.outcomes if o.status is not None and o.status >= 500]


def render(args: argparse.Namespace, stack: Stack, found: Findings, code_hash: str, files: dict[str, Path]) -> str:
    command = " ".join([".venv/bin/python", "bench/fuzz_webhook.py", *sys.argv[1:]])
    out = [
        f"## Webhook fuzz run: seed {args.seed}, {len(found.run.outcomes):,} requests, {stack.label}",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')}; concurrency {args.concurrency}; service code sha256 {code_hash} "
        f"(working tree at start); command `{command}`" + ("; INTERRUPTED" if found.run.interrupted else ""),
        "",
        *table(["", ""], _summary_rows(stack, found, files)),
        *_status_tables(found.run.outcomes, found.server_errors),
        *_cause_section(found),
        *_mismatch_section(found.run.outcomes),
        *_slow_section(found.run.outcomes),
        *_first_5xx_section(found),
        *_log_section(found.run_log),
        "Files: " + ", ".join(f"{name} `{path}`" for name, path in files.items()),
        "",
        f"Rerun: `{command}`; resend the 5xx: `.venv/bin/python bench/fuzz_webhook.py --replay {files['5xx']}`; "
        f"the minimized ones: `--replay {files['repro']}`",
    ]
    return "\n".join(out) + "\n"


def _summary_rows(stack: Stack, found: Findings, files: dict[str, Path]) -> list[list[Any]]:
    outcomes = found.run.outcomes
    statuses = Counter(o.status for o in outcomes if o.status is not None)
    errors = Counter(o.error.split(":")[0] for o in outcomes if o.status is None)
    latencies = [o.elapsed for o in outcomes if o.status is not None]
    h_status, h_body = found.health[0] if found.health else (None, {})
    h_body = h_body if isinstance(h_body, dict) else {}
    workers_seen = Counter(str(b.get("worker")) if isinstance(b, dict) else "no answer" for _, b in found.health)
    records = parse_log(found.run_log)
    rows: list[list[Any]] = [
        ["requests sent", f"{len(outcomes):,}"],
        ["by status", ", ".join(f"{s}: {n:,}" for s, n in sorted(statuses.items()))],
        ["5xx", f"**{len(found.server_errors)}** ({len(found.causes)} distinct causes)"],
        ["connection errors", f"{sum(errors.values())}" + (f" ({dict(errors)})" if errors else "")],
        ["requests/s", f"{len(outcomes) / max(found.run.seconds, 1e-9):,.0f} ({found.run.seconds:.1f} s)"],
        [
            "latency p50 / p99 / max",
            f"{percentile(latencies, 0.5) * 1000:.0f} ms / {percentile(latencies, 0.99) * 1000:.0f} ms / "
            f"{max(latencies, default=0) * 1000:.0f} ms",
        ],
        [f"slow answers (> {SLOW_SECONDS:.0f} s)", sum(1 for o in outcomes if o.elapsed > SLOW_SECONDS)],
        ["status differs from the expected one", sum(1 for o in outcomes if o.unexpected)],
        ["server process", "alive" if stack.alive() else f"**exited ({stack.exit_code()})**"],
        [
            "/health after the run",
            f"{h_status} status={h_body.get('status')} redis={h_body.get('redis')} "
            f"gateways={','.join(h_body.get('gateways', []))}",
        ],
        ["worker thread (health `worker`)", ", ".join(f"{w} x{n}" for w, n in workers_seen.items())],
        [
            "buffer after drain",
            f"chats_pending={found.drained.get('chats_pending')} in_progress={found.drained.get('chats_in_progress')} "
            f"dead_letters={found.drained.get('dead_letters')}",
        ],
        ["health counters", ", ".join(f"{k}={v}" for k, v in (h_body.get("counters") or {}).items() if v)],
    ]
    if stack.gunicorn:
        boots = found.run_log.count("Booting worker with pid")
        rows.append(["gunicorn worker boots", f"{boots} for -w {stack.gunicorn}"])
    if stack.fakes is not None:
        rows.append(["fakes received", ", ".join(f"{k} {v}" for k, v in stack.fakes.summary().items())])
        rows.append(["fake handler crashes", ", ".join(f"{k} x{v}" for k, v in stack.fakes.errors.items()) or "0"])
    longest = max((len(line) for line in found.run_log.splitlines()), default=0)
    size = f"{len(found.run_log) / 1e6:.1f} MB, {found.run_log.count(chr(10)):,} lines, longest line {longest:,} chars"
    rows.append(["server log size during the run", size])
    errors_logged = sum(1 for r in records if r.level in ("ERROR", "CRITICAL"))
    tracebacks = sum(1 for r in records if r.has_traceback)
    rows.append(
        [
            "server log during the run",
            f"{errors_logged} ERROR records, {tracebacks} tracebacks, {len(unstamped_lines(records))} lines not in "
            f"the log format, {found.run_log.count(chr(0))} NUL characters (+{found.minimize_tracebacks} tracebacks "
            f"while minimizing; {files['log']})",
        ]
    )
    return rows


def unstamped_lines(records: list[LogRecord]) -> list[str]:
    """Lines outside a traceback that do not start with the log format's timestamp: a logged value that carried a
    newline (Flask's " * Serving" banner aside)."""
    return [line for r in records if not r.has_traceback for line in r.lines[1:] if not line.startswith(" * ")]


def _status_tables(outcomes: list[Outcome], server_errors: list[Outcome]) -> list[str]:
    codes = sorted({o.status for o in outcomes if o.status is not None})
    by_target: dict[str, Counter[int | None]] = defaultdict(Counter)
    for o in outcomes:
        by_target[o.target][o.status] += 1
    rows = [
        [t, sum(c.values()), *(c.get(code, "") for code in codes), c.get(None, "")]
        for t, c in sorted(by_target.items())
    ]
    op_total: Counter[str] = Counter(op for o in outcomes for op in o.ops)
    op_5xx: Counter[str] = Counter(op for o in server_errors for op in o.ops)
    return [
        "",
        "### Status by target",
        "",
        *table(["target", "n", *map(str, codes), "conn err"], rows),
        "",
        "### 5xx by mutation operator (requests carrying it / 5xx among them)",
        "",
        *table(["operator", "requests", "5xx"], [[op, op_total[op], op_5xx.get(op, 0)] for op in sorted(op_total)]),
    ]


def _cause_section(found: Findings) -> list[str]:
    out = ["", f"### Distinct 5xx causes ({len(found.causes)})", ""]
    if not found.causes and not found.unknown_5xx:
        out.append("None.")
    for n, report in enumerate(found.causes, 1):
        seeds_seen = Counter(o.seed for o in report.outcomes)
        out += [
            f"**{n}. {report.cause.key}**: {len(report.outcomes)} requests "
            f"(seeds: {', '.join(f'{s} x{c}' for s, c in seeds_seen.most_common(6))}; "
            f"e.g. #{', #'.join(str(o.index) for o in report.outcomes[:6])})",
            "",
            "```text",
            *report.summary,
            "```",
            "",
        ]
        if report.repro is not None:
            out += [f"Minimal reproducer ({report.repro_note}):", "", "```http", request_text(report.repro), "```", ""]
        elif report.repro_note:
            out += [f"Reproducer: {report.repro_note}", ""]
    if found.unknown_5xx:
        examples = ", ".join(f"#{o.index} {o.status} {o.seed}" for o in found.unknown_5xx[:20])
        out += [f"{len(found.unknown_5xx)} 5xx without a matching traceback in the log: {examples}", ""]
    return out


def _mismatch_section(outcomes: list[Outcome]) -> list[str]:
    unexpected = [o for o in outcomes if o.unexpected]
    groups: dict[tuple[str, str, int | None], list[Outcome]] = defaultdict(list)
    for o in unexpected:
        groups[(o.seed, ",".join(map(str, sorted(o.expect or ()))), o.status)].append(o)
    rows = [
        [seed, exp, got, len(items), f"#{items[0].index}", "; ".join(items[0].mutations)[:140], items[0].answer[:100]]
        for (seed, exp, got), items in sorted(groups.items(), key=lambda kv: -len(kv[1]))[:40]
    ]
    header = ["seed", "expected", "got", "n", "example", "mutations of the example", "answer"]
    return ["", f"### Status differs from the expected one ({len(unexpected)})", "", *table(header, rows)]


def _slow_section(outcomes: list[Outcome]) -> list[str]:
    slow = sorted((o for o in outcomes if o.elapsed > SLOW_SECONDS), key=lambda o: -o.elapsed)
    shown = slow[:10] or sorted(outcomes, key=lambda o: -o.elapsed)[:5]
    rows = [
        [o.index, f"{o.elapsed:.2f}", o.status or o.error[:40], o.seed, o.size, "; ".join(o.mutations)[:120]]
        for o in shown
    ]
    title = f"### Slowest answers ({len(slow)} over {SLOW_SECONDS:.0f} s)"
    return ["", title, "", *table(["#", "seconds", "status", "seed", "bytes", "mutations"], rows)]


def _first_5xx_section(found: Findings) -> list[str]:
    out = ["", f"### First {MAX_5XX_PRINTED} 5xx with the server log around them", ""]
    if not found.server_errors:
        out.append("None.")
    records = parse_log(found.run_log)
    for o in sorted(found.server_errors, key=lambda o: o.started)[:MAX_5XX_PRINTED]:
        out += [f"#{o.index} {o.method} {o.url[:100]} -> {o.status} ({o.seed}; {'; '.join(o.mutations)[:160]})"]
        out += ["```text", *_log_around(records, o, found.matched.get(o.index)), "```", ""]
    return out


def _log_around(records: list[LogRecord], outcome: Outcome, matched: LogRecord | None) -> list[str]:
    """The WARNING+ lines logged while the request was in flight, then the traceback matched to it."""
    end = outcome.started + outcome.elapsed
    nearby = [
        r.head[:300]
        for r in records
        if r.level in ("WARNING", "ERROR", "CRITICAL")
        and outcome.started - 0.05 <= r.at <= end
        and (matched is None or r.lines != matched.lines)
    ]
    context = nearby[-8:]
    return [*context, *(matched.lines[:60] if matched is not None else ["(no traceback matched to this request)"])]


def _log_section(run_log: str) -> list[str]:
    """Each distinct ERROR record (by its cause, or its text without the timestamp) once, with its count; then
    the log records that carried lines of their own (a logged value with a newline in it)."""
    records = parse_log(run_log)
    groups: dict[str, list[LogRecord]] = defaultdict(list)
    for record in records:
        if record.level in ("ERROR", "CRITICAL") or record.has_traceback:
            found = cause_of(record)
            groups[found[0].key if found else _STAMP.sub("", record.head)[:200]].append(record)
    out = ["", f"### Server log during the run: ERROR and Traceback records ({len(groups)} distinct)", ""]
    for key, items in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        out += [f"{len(items)} x {key}", "", "```text", *(line[:300] for line in items[0].lines[:40]), "```", ""]
    split = [r for r in records if not r.has_traceback and len(r.lines) > 1 and not r.lines[1].startswith(" * ")]
    if split:
        out += [f"Log records spread over several lines ({len(split)}; first 8, escaped):", "", "```text"]
        out += ["\n".join(r.lines).encode("unicode_escape").decode()[:400] for r in split[:8]]
        out += ["```", ""]
    return out


def service_code_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(SOURCE.glob("*.py")) + sorted((SOURCE / "gateways").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


# ----- main ------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=10_000, help="requests to send (default 10000)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    p.add_argument("--seed", type=int, default=1, help="RNG seed: the same seed sends the same requests")
    p.add_argument("--gunicorn", type=int, default=0, metavar="N", help="serve with `gunicorn webhook:app -w N`")
    p.add_argument("--out", type=Path, help="markdown report (default bench/results/fuzz-seed<S>[-gunicorn<N>].md)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    p.add_argument("--drain-timeout", type=float, default=20.0, help="seconds to wait for the worker to answer")
    p.add_argument("--no-minimize", action="store_true", help="do not shrink a reproducer per 5xx cause")
    p.add_argument("--python", type=Path, default=PYTHON, help="interpreter for `python webhook.py`")
    p.add_argument(
        "--source",
        type=Path,
        default=ROOT,
        help="run the service from this copy of the code (default: the working tree)",
    )
    p.add_argument("--replay", type=Path, help="send the requests of a .jsonl written by a run, in order")
    args = p.parse_args(argv)
    if args.out is None:
        name = (
            "replay"
            if args.replay
            else f"fuzz-seed{args.seed}" + (f"-gunicorn{args.gunicorn}" if args.gunicorn else "")
        )
        args.out = RESULTS_DIR / f"{name}.md"
    return args


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    global SOURCE
    args = parse_args(argv)
    SOURCE = args.source.resolve()
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    files = {
        "report": out,
        "5xx": out.with_suffix(".5xx.jsonl"),
        "repro": out.with_suffix(".repro.jsonl"),
        "log": out.with_suffix(".server.log"),
    }
    code_hash = service_code_hash()
    workdir = Path(tempfile.mkdtemp(prefix="fuzz-webhook-"))
    stack = Stack(workdir, gunicorn=args.gunicorn, python=args.python)
    try:
        print(f"starting redis-server, fakes and {stack.label} (workdir {workdir})", file=sys.stderr)
        stack.start()
        if args.replay:
            return replay(stack, args)
        requests = (build_request(args.seed, i) for i in range(args.count))
        run = run_requests(stack, requests, args.count, args, files["5xx"])
        print("waiting for the worker to answer what was buffered", file=sys.stderr)
        drained = drain(stack, 0 if run.interrupted else args.drain_timeout)
        health = final_health(stack, max(1, 3 * args.gunicorn))
        run_end = stack.log_size()
        run_log = stack.log_text(0, run_end)
        causes, unknown, matched = group_causes(run.outcomes, parse_log(run_log))
        found = Findings(
            run=run,
            causes=causes,
            unknown_5xx=unknown,
            matched=matched,
            health=health,
            drained=drained,
            run_log=run_log,
        )
        if causes and not args.no_minimize and not run.interrupted and stack.alive():
            minimize_all(stack, causes, args)
            found.minimize_tracebacks = stack.log_text(run_end).count("Traceback")
        with open(files["repro"], "w", encoding="utf-8") as fh:
            for report in causes:
                if report.repro is not None:
                    fh.write(json.dumps(report.repro.to_json() | {"cause": report.cause.key}) + "\n")
        text = render(args, stack, found, code_hash, files)
        out.write_text(text, encoding="utf-8")
        print(text)
        worker_ok = all(isinstance(b, dict) and b.get("worker") == "alive" for _, b in health)
        return 0 if not found.server_errors and stack.alive() and worker_ok and not run.interrupted else 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 1
    finally:
        stack.stop()
        if stack.log_path.exists():
            shutil.copyfile(stack.log_path, files["log"])
        shutil.rmtree(workdir, ignore_errors=True)


def group_causes(
    outcomes: list[Outcome], records: list[LogRecord]
) -> tuple[list[CauseReport], list[Outcome], dict[int, LogRecord]]:
    """The 5xx grouped by the traceback each produced, those without one, and request index -> its traceback."""
    server_errors = [o for o in outcomes if o.status is not None and o.status >= 500]
    matched = match_causes(server_errors, records)
    reports: dict[Cause, CauseReport] = {}
    unknown: list[Outcome] = []
    for outcome in server_errors:
        record = matched.get(outcome.index)
        found = cause_of(record) if record is not None else None
        if found is None:
            unknown.append(outcome)
            continue
        cause, summary = found
        reports.setdefault(cause, CauseReport(cause, summary)).outcomes.append(outcome)
    return sorted(reports.values(), key=lambda r: -len(r.outcomes)), unknown, matched


def minimize_all(stack: Stack, causes: list[CauseReport], args: argparse.Namespace) -> None:
    """A small reproducer per cause, from the smallest of its requests that fails again on its own (up to three
    are tried: under gunicorn the log has one-second timestamps, so a 5xx may be matched to the wrong traceback)."""
    for report in causes:
        tried = []
        for outcome in sorted(report.outcomes, key=lambda o: o.size)[:3]:
            request = build_request(args.seed, outcome.index)
            print(f"minimizing {report.cause.key} from #{outcome.index} ({outcome.size} bytes)", file=sys.stderr)
            found, sent = minimize(stack, request, report.cause, args.timeout)
            if found is not None:
                report.repro = found
                report.repro_note = f"from #{outcome.index}, {len(found.body)} bytes after {sent} tries"
                break
            tried.append(f"#{outcome.index}")
        else:
            report.repro_note = f"{', '.join(tried)}: none fails on its own on a flushed Redis (order or state matters)"


def replay(stack: Stack, args: argparse.Namespace) -> int:
    """Send the saved requests one by one and print what each got and the traceback it caused."""
    failures = 0
    for line in args.replay.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        request = FuzzRequest.from_json(json.loads(line))
        offset = stack.log_size()
        status, answer, error = send("127.0.0.1", stack.port, request, args.timeout)
        time.sleep(0.2)
        causes = [found for r in parse_log(stack.log_text(offset)) if (found := cause_of(r)) is not None]
        failures += status is None or status >= 500
        print(f"#{request.index} {request.method} {request.url[:80]} -> {status or error} {answer[:120]!r}")
        for cause, summary in causes[:1]:
            print(f"  {cause.key}")
            print("\n".join(summary))
    print(f"server {'alive' if stack.alive() else 'EXITED'}; {failures} requests got a 5xx or no answer")
    return 1 if failures or not stack.alive() else 0


if __name__ == "__main__":
    sys.exit(main())
