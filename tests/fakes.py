"""Local HTTP fakes of the services the assistant calls: Gemini's generateContent and Evolution's sendText.

Each runs a stdlib ThreadingHTTPServer on 127.0.0.1 (port 0) in a daemon thread, records every request it
receives, and answers from a script of queued responses, then from its default. Tests point the real
clients (google-genai via GEMINI_BASE_URL, requests via EVOLUTION_API) at `.url`.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    status: int = 0  # what the fake answered (0 while it is still answering)
    seq: int = 0  # its number among the requests this fake received (1 = the first), set as it arrives

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Canned:
    status: int = 200
    body: Any = None  # dict -> JSON; None -> the fake's default answer
    delay: float = 0.0


@dataclass
class FakeServer:
    """Base fake: records requests, answers from `script` (FIFO) and then from `default_answer`."""

    requests: list[Recorded] = field(default_factory=list)
    script: deque[Canned] = field(default_factory=deque)
    delay: float = 0.0  # applied to every answer

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes; don't wait for the ACK

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                self._handle("POST")

            def do_GET(self) -> None:  # noqa: N802
                self._handle("GET")

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if len(body) < length:
                    # The client died between the headers and the body (urllib3 writes them separately): a real
                    # server never handles a request cut short, so neither is it recorded nor answered.
                    self.close_connection = True
                    return
                recorded = Recorded(
                    method, self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time()
                )
                status, answer, delay = fake._answer(recorded)
                if delay:
                    time.sleep(delay)
                # bytes are served as a file (media downloads), anything else as JSON
                data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header(
                    "Content-Type", "application/octet-stream" if isinstance(answer, bytes) else "application/json"
                )
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _answer(self, recorded: Recorded) -> tuple[int, Any, float]:
        with self._lock:
            self.requests.append(recorded)
            recorded.seq = len(self.requests)  # under the lock: two requests at once get two numbers
            canned = self.script.popleft() if self.script else Canned()
        body = canned.body if canned.body is not None else self.default_answer(recorded)
        if isinstance(body, Canned):  # a default answer with its own status
            recorded.status = body.status
            return body.status, body.body, canned.delay or self.delay
        recorded.status = canned.status
        return canned.status, body, canned.delay or self.delay

    def default_answer(self, recorded: Recorded) -> Any:
        return {}

    def queue(self, *answers: Canned) -> None:
        with self._lock:
            self.script.extend(answers)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Recorded]:
        """Poll until at least `count` requests arrived; returns them (fails the test on timeout)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self._lock:
                if len(self.requests) >= count:
                    return list(self.requests)
            time.sleep(0.02)
        raise AssertionError(f"expected {count} requests, got {len(self.requests)}")

    def received(self) -> list[Recorded]:
        with self._lock:
            return list(self.requests)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.script.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def gemini_answer(text: str) -> dict[str, Any]:
    """A generateContent response body carrying `text`."""
    return {
        "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15},
    }


def gemini_error(code: int, status: str = "UNAVAILABLE") -> dict[str, Any]:
    return {"error": {"code": code, "message": "fake error", "status": status}}


class FakeGemini(FakeServer):
    """generateContent: by default answers "Resposta N: <last user text>" so tests can tell replies apart."""

    reply_for: Callable[[Recorded], str] | None = None

    def default_answer(self, recorded: Recorded) -> Any:
        if self.reply_for is not None:
            return gemini_answer(self.reply_for(recorded))
        contents = recorded.json.get("contents", [])
        texts = [part["text"] for part in contents[-1]["parts"] if "text" in part] if contents else []
        return gemini_answer(f"Resposta: {texts[-1] if texts else ''}")

    def prompts(self) -> list[dict[str, Any]]:
        return [r.json for r in self.received() if ":generateContent" in r.path]


def js_date_seconds(value: Any) -> int:
    """`Math.floor(new Date(value).getTime() / 1000)`: a number is milliseconds, a string an ISO date."""
    if isinstance(value, int | float):
        return int(value // 1000)
    return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp())


class FakeEvolution(FakeServer):
    """sendText: answers 201-like JSON with a fresh message id, as Evolution does. getBase64FromMediaMessage:
    answers the base64 of `media[key id]` (set by the test), or Evolution's 400 shape for an unknown id."""

    media: dict[str, tuple[bytes, str]]
    # Called with each sendText request and the answer about to be given, before it is given: a test can post
    # the echo webhooks Evolution sends for it (`send.message` comes before sendText answers).
    on_send: Callable[[Recorded, dict[str, Any]], None] | None = None

    def default_answer(self, recorded: Recorded) -> Any:
        if "/chat/findMessages/" in recorded.path:
            return self.find_messages(recorded.json)
        if "/chat/getBase64FromMediaMessage/" in recorded.path:
            message_id = recorded.json.get("message", {}).get("key", {}).get("id", "")
            if message_id not in getattr(self, "media", {}):
                return Canned(400, {"status": 400, "error": "Bad Request", "response": {"message": ["not found"]}})
            data, mime = self.media[message_id]
            return {
                "mediaType": "audioMessage",
                "fileName": "",
                "mimetype": mime,
                "base64": base64.b64encode(data).decode(),
            }
        body = recorded.json
        answer = {
            "key": {"remoteJid": body.get("number"), "fromMe": True, "id": f"FAKE{recorded.seq:06d}"},
            "message": {"extendedTextMessage": {"text": body.get("text", "")}},
            "messageTimestamp": str(int(time.time())),
            "status": "PENDING",
        }
        if self.on_send is not None:
            self.on_send(recorded, answer)
        return answer

    def sends(self) -> list[Recorded]:
        return [r for r in self.received() if "/message/sendText/" in r.path]

    def find_messages(self, query: dict[str, Any]) -> dict[str, Any]:
        """`POST /chat/findMessages/{instance}` the way Evolution 2.x answers it: the messages it sent (here: every
        sendText it took, stored as it arrived unless answered with an error), filtered by `key.remoteJid` and,
        only when both bounds are given, `messageTimestamp` {gte, lte} read as JavaScript's `new Date(value)` does
        (so a bare number counts as milliseconds since 1970); newest first, one page of `offset`."""
        where = query.get("where") or {}
        jid = (where.get("key") or {}).get("remoteJid")
        bounds = where.get("messageTimestamp") or {}
        records = []
        for n, send in enumerate(self.sends()):
            body = send.json
            if (jid and body.get("number") != jid) or send.status >= 300:  # refused: never stored
                continue
            records.append(
                {
                    "key": {"remoteJid": body.get("number"), "fromMe": True, "id": f"FAKE{n:06d}"},
                    "message": {"conversation": body.get("text", "")},
                    "messageTimestamp": int(send.at),
                }
            )
        if bounds.get("gte") and bounds.get("lte"):
            low, high = js_date_seconds(bounds["gte"]), js_date_seconds(bounds["lte"])
            records = [r for r in records if low <= r["messageTimestamp"] <= high]
        records.reverse()
        page = records[: int(query.get("offset") or 50)]
        return {"messages": {"total": len(records), "pages": 1, "currentPage": 1, "records": page}}

    def media_requests(self) -> list[Recorded]:
        return [r for r in self.received() if "/chat/getBase64FromMediaMessage/" in r.path]


def openai_answer(
    text: str, *, prompt_tokens: int = 12, completion_tokens: int = 7, model: str = "gpt-4o-mini"
) -> dict[str, Any]:
    """A Chat Completions response body carrying `text` (the shape OpenAI and compatible servers answer)."""
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "logprobs": None}
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def openai_error(status: int, message: str = "fake error") -> dict[str, Any]:
    return {"error": {"message": message, "type": "server_error", "param": None, "code": str(status)}}


class FakeOpenAI(FakeServer):
    """`/v1/chat/completions`: answers "Resposta: <last user text>" (or `reply_for(recorded)`);
    `/v1/audio/transcriptions`: answers `{"text": transcript}`. Point the client at `url + "/v1"`."""

    reply_for: Callable[[Recorded], str] | None = None
    transcript: str = "transcrição de teste"

    def default_answer(self, recorded: Recorded) -> Any:
        if recorded.path.endswith("/audio/transcriptions"):
            return {"text": self.transcript}
        if self.reply_for is not None:
            return openai_answer(self.reply_for(recorded))
        messages = recorded.json.get("messages", [])
        content = messages[-1]["content"] if messages else ""
        if isinstance(content, list):
            content = " ".join(part.get("text", "") for part in content if part.get("type") == "text")
        return openai_answer(f"Resposta: {content}")

    def completions(self) -> list[dict[str, Any]]:
        return [r.json for r in self.received() if r.path.endswith("/chat/completions")]

    def transcriptions(self) -> list[Recorded]:
        return [r for r in self.received() if r.path.endswith("/audio/transcriptions")]
