"""Webhook load generator, run in separate processes (multiprocessing, spawn) so it never shares the GIL
with the service or the fakes.

A minimal HTTP/1.1 client over raw sockets (keep-alive when the server allows it; gunicorn's sync worker
answers `Connection: close`, so there every request opens a new connection, as it would in production).
It is deliberately cheap so that on a 2-core machine most CPU is left to the server.

Two modes:
- closed loop: T threads each send back-to-back for `duration` seconds -> max throughput.
- paced (open loop): request i is due at start + i/rate whatever happened before; latency is measured from
  that intended time (no coordinated omission) and also from the actual send.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import threading
import time
from typing import Any

INSTANCE = "loja-bench"
PHONE_BASE = 5511900000000  # chat n -> "55119" + 8 digits, like real Brazilian mobile JIDs


def jid_for(chat: int) -> str:
    return f"{PHONE_BASE + chat}@s.whatsapp.net"


def _template() -> str:
    """An Evolution v2 messages.upsert body (~700 bytes) with placeholders for chat, id and time."""
    body = {
        "event": "messages.upsert",
        "instance": "@@INSTANCE@@",
        "data": {
            "key": {"remoteJid": "@@JID@@", "fromMe": False, "id": "@@ID@@"},
            "pushName": "Cliente Bench",
            "status": "DELIVERY_ACK",
            "message": {"conversation": "Oi! Vocês têm o tênis 42 em estoque? Qual o preço?"},
            "messageType": "conversation",
            "messageTimestamp": 1700000000,
            "instanceId": "0b7d6c1e-bench-4a55-9d3b-5f0c2a7e1d11",
            "source": "android",
        },
        "destination": "http://127.0.0.1/webhook",
        "date_time": "2026-01-15T10:20:30.000Z",
        "sender": "5511900001111@s.whatsapp.net",
        "server_url": "http://evolution.bench.local:8080",
        "apikey": "bench-instance-token",
    }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


TEMPLATE = _template()


def instance_for(chat: int, instances: int = 1) -> str:
    """The Evolution instance chat n writes to: INSTANCE, or one of `instances` (rows T: one per tenant)."""
    return INSTANCE if instances <= 1 else f"{INSTANCE}-{chat % instances:02d}"


def body_for(chat: int, msg_id: str, instances: int = 1) -> bytes:
    body = TEMPLATE.replace("@@JID@@", jid_for(chat)).replace("@@ID@@", msg_id)
    return body.replace("@@INSTANCE@@", instance_for(chat, instances)).encode()


class Conn:
    """One HTTP/1.1 connection; reconnects when the server closed it."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.sock: socket.socket | None = None
        self.buf = b""
        self.connects = 0
        self.retries = 0
        self.head = f"POST /webhook HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n".encode()

    def _connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self.buf = sock, b""
        self.connects += 1

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock, self.buf = None, b""

    def post(self, body: bytes) -> tuple[int, bytes]:
        data = self.head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        reused = self.sock is not None
        if not reused:
            self._connect()
        try:
            self.sock.sendall(data)  # type: ignore[union-attr]
            return self._read()
        except _NothingReceived:
            # A kept-alive connection the server had closed before it read anything: resend once.
            self.close()
            if not reused:
                raise ConnectionError("connection closed before any response") from None
            self.retries += 1
            self._connect()
            self.sock.sendall(data)  # type: ignore[union-attr]
            return self._read()
        except OSError:
            self.close()
            raise

    def _read(self) -> tuple[int, bytes]:
        sock = self.sock
        assert sock is not None
        buf = self.buf
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                if buf:
                    raise ConnectionError("connection closed mid-response")
                raise _NothingReceived()
            buf += chunk
        head = buf[:end].decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        length, close = 0, head[0].startswith("HTTP/1.0")
        for line in head[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and "close" in value.lower():
                close = True
        rest = buf[end + 4 :]
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed mid-body")
            rest += chunk
        self.buf = rest[length:]
        if close:
            self.close()
        return status, rest[:length]


class _NothingReceived(ConnectionError):
    pass


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def closed_loop(
    port: int,
    *,
    proc_index: int,
    threads: int,
    start_at: float,
    warmup: float,
    duration: float,
    chats: int,
    run_tag: int,
    result_q: Any,
    expect: bytes = b'"buffered"',
    instances: int = 1,
) -> None:
    """Each thread posts back to back from start_at to start_at+warmup+duration; counts the last `duration`.

    A 200 counts as ok when its body contains `expect` (b"" = any 200: row H's empty app answers no "buffered")."""
    measure_from = start_at + warmup
    stop_at = measure_from + duration
    lock = threading.Lock()
    totals: dict[str, Any] = {"ok": 0, "errors": 0, "not_buffered": 0, "sent": 0, "lat": [], "err_samples": []}
    conns: list[Conn] = []

    def run(thread_index: int) -> None:
        conn = Conn("127.0.0.1", port)
        conns.append(conn)
        ok = errors = not_buffered = 0
        lat: list[float] = []
        samples: list[str] = []
        seq = sent = 0
        chat = (proc_index * 7919 + thread_index * 104729) % chats
        while time.time() < start_at:
            time.sleep(0.001)
        while True:
            now = time.time()
            if now >= stop_at:
                break
            seq += 1
            chat = (chat + 1) % chats
            msg_id = f"3EB0{run_tag:04X}{proc_index:02X}{thread_index:02X}{seq:08X}"
            t0 = time.perf_counter()
            try:
                status, body = conn.post(body_for(chat, msg_id, instances))
            except OSError as exc:
                if now >= measure_from:
                    errors += 1
                    if len(samples) < 3:
                        samples.append(repr(exc))
                time.sleep(0.01)
                continue
            t1 = time.perf_counter()
            sent += 1
            if now < measure_from:
                continue
            if status != 200:
                errors += 1
                if len(samples) < 3:
                    samples.append(f"{status} {body[:120]!r}")
            elif expect not in body:
                not_buffered += 1
            else:
                ok += 1
                lat.append(t1 - t0)
        conn.close()
        with lock:
            totals["ok"] += ok
            totals["errors"] += errors
            totals["not_buffered"] += not_buffered
            totals["sent"] += sent
            totals["lat"].extend(lat)
            totals["err_samples"].extend(samples)

    cpu0 = _cpu()
    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    totals["cpu"] = _cpu() - cpu0
    totals["connects"] = sum(c.connects for c in conns)
    totals["retries"] = sum(c.retries for c in conns)
    totals["duration"] = duration
    result_q.put(totals)


def paced(
    port: int,
    *,
    proc_index: int,
    threads: int,
    start_at: float,
    rate: float,
    count: int,
    chats: int,
    chat_offset: int,
    run_tag: int,
    result_q: Any,
    expect: bytes = b'"buffered"',
) -> None:
    """Open loop: request i is due at start_at + i/rate and goes to chat (chat_offset + i) % chats.

    Returns per request: (i, intended, sent, done, ok); ok = a 200 whose body contains `expect` (b"" = any 200)."""
    counter = itertools.count()
    lock = threading.Lock()
    records: list[tuple[int, float, float, float, bool]] = []
    samples: list[str] = []
    conns: list[Conn] = []

    def run() -> None:
        conn = Conn("127.0.0.1", port)
        conns.append(conn)
        mine: list[tuple[int, float, float, float, bool]] = []
        while True:
            i = next(counter)
            if i >= count:
                break
            intended = start_at + i / rate
            delay = intended - time.time()
            if delay > 0:
                time.sleep(delay)
            chat = (chat_offset + i) % chats
            msg_id = f"3EB0{run_tag:04X}{proc_index:02X}P{i:09X}"
            sent = time.time()
            ok = False
            try:
                status, body = conn.post(body_for(chat, msg_id))
                ok = status == 200 and expect in body
                if not ok and len(samples) < 3:
                    samples.append(f"{status} {body[:120]!r}")
            except OSError as exc:
                if len(samples) < 3:
                    samples.append(repr(exc))
            mine.append((i, intended, sent, time.time(), ok))
        conn.close()
        with lock:
            records.extend(mine)

    cpu0 = _cpu()
    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    result_q.put(
        {
            "records": records,
            "err_samples": samples,
            "cpu": _cpu() - cpu0,
            "connects": sum(c.connects for c in conns),
            "retries": sum(c.retries for c in conns),
        }
    )
