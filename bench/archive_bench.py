"""Benchmark of the archive (DATABASE_URL): rows A1-A3 of `make bench` (`bench/run.py --only A`), or alone with
`.venv/bin/python bench/archive_bench.py [--quick]` (writes bench/results/archive.md).

Starts a throwaway PostgreSQL (tests/postgres_server.py, in a temp dir, removed at the end) beside run.py's
redis-server and fakes, and measures:
  A1  the archive writer alone: N realistic events (customer and bot messages of many chats, pt-BR texts of
      60-200 characters) put in the stream with Journal.emit, then ArchiveWriter.step() until the stream is empty
  A2  webhook max throughput with DATABASE_URL empty and set: two gunicorns up at once (Redis db 0 and 1), loaded
      at the same time (webhook_windows_together) so both see the same moment of the machine
  A3  drain of N chats due in the same second, each server alone, in off-on / on-off pairs (drain); for "on"
      also when PostgreSQL had every event of the drain

Not named archive.py: bench/ comes first on sys.path, and that name would hide the service's `archive` package.
"""

from __future__ import annotations

import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from redis import Redis

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import harness  # noqa: E402
import loadgen  # noqa: E402
from harness import ROOT, FakeHost, Gunicorn, RedisProc, machine_window, system_cpu, tree_cpu_seconds  # noqa: E402
from run import (  # noqa: E402
    PREFIX,
    RESULTS_DIR,
    Report,
    base_env,
    collect,
    log,
    make_buffer,
    ms,
    pct,
    preload,
    run_load,
    secs,
    sleep_until,
    wait_sends,
)

if TYPE_CHECKING:
    from tests.postgres_server import PostgresServer

WRITER_TARGET_EVENTS_PER_SECOND = 5000
SIDE_BY_SIDE_TOLERANCE = 0.10  # archive on within 10 % of off
EMIT_CHUNK = 100  # events per Journal.emit call in A1 (the worker emits a burst's events in one call)
OFF_DB, ON_DB, WRITER_DB = 0, 1, 2  # Redis databases: the two servers of A2/A3 and the writer of A1

CUSTOMER_SENTENCES = [
    "Oi, boa tarde! Vocês têm o tênis de corrida no tamanho 42?",
    "Qual é o prazo de entrega para São Paulo capital?",
    "Posso pagar no Pix ou só no cartão de crédito?",
    "Ainda tem a promoção de frete grátis acima de R$ 199?",
    "Meu pedido não chegou, o código de rastreio é BR123456789BR.",
    "Vocês abrem no domingo? Preciso retirar na loja do centro.",
    "A camiseta azul tem no M ou só no G?",
    "Obrigado pela atenção, vou pensar e volto a falar com vocês.",
    "Dá pra trocar se não servir? Comprei na semana passada.",
    "Quanto fica o parcelamento em 10 vezes sem juros?",
    "Bom dia, queria saber se a bota de couro é impermeável.",
    "Minha filha calça 34, qual tamanho vocês recomendam?",
]
BOT_SENTENCES = [
    "Olá! Temos sim o tênis no 42, nas cores preta e branca.",
    "O prazo para a capital é de 2 a 4 dias úteis após a confirmação do pagamento.",
    "Aceitamos Pix, boleto e cartão em até 10x sem juros.",
    "Vou confirmar com a equipe e já te retorno, tudo bem?",
    "A troca pode ser feita em até 30 dias, com a etiqueta e a nota fiscal.",
    "Nossa loja do centro abre de segunda a sábado, das 9h às 19h.",
    "O frete é grátis para compras acima de R$ 199 em todo o Brasil.",
    "Para calçados infantis recomendamos um número acima do atual.",
    "Posso te ajudar com mais alguma coisa?",
]


# ----- realistic events ----------------------------------------------------------------------------------


def _text(rng: random.Random, sentences: list[str]) -> str:
    """pt-BR sentences joined up to a length drawn from 60..200 characters (cut at a word)."""
    goal = rng.randint(60, 200)
    text = rng.choice(sentences)
    while len(text) < goal:
        text += " " + rng.choice(sentences)
    if len(text) > 200:
        text = text[:200].rsplit(" ", 1)[0]
    return text


def realistic_events(n: int, *, chats: int, seed: int = 7) -> list[Any]:
    """n events as the worker emits them: bursts of 1-3 customer messages, then a reply of 1-2 parts; one burst in
    fifty is a decision instead of a reply. Chats are visited in random order, many bursts each."""
    from archive.events import decision_event, message_events, reply_part_event
    from models import ChatRef

    rng = random.Random(seed)
    start = time.time() - 86400
    events: list[Any] = []
    burst = 0
    while len(events) < n:
        burst += 1
        number = rng.randrange(chats)
        chat = ChatRef(gateway="evolution", instance=loadgen.INSTANCE, chat_id=loadgen.jid_for(800_000 + number))
        at = start + burst * 0.5
        records = [
            {
                "id": f"3EB0{burst:010X}{i:02X}",
                "text": _text(rng, CUSTOMER_SENTENCES),
                "at": at + i,
                "name": "Cliente Bench",
                "ts": int(at + i),
            }
            for i in range(rng.randint(1, 3))
        ]
        events += message_events(chat, records, now=at)
        last = records[-1]["id"]
        if rng.random() < 0.02:
            events.append(decision_event(chat, kind="out_of_hours", about=last, at=at + 5))
            continue
        for index in range(rng.randint(1, 2)):
            events.append(
                reply_part_event(
                    chat,
                    reply_to=last,
                    index=index,
                    text=_text(rng, BOT_SENTENCES),
                    message_id=f"BAE5{burst:010X}{index:02X}",
                    at=at + 6 + index,
                )
            )
    return events[:n]


# ----- helpers ---------------------------------------------------------------------------------------------


def ship_migrations() -> None:
    """The bench's source snapshot holds only .py files: give it the archive's SQL migrations too."""
    if harness.SOURCE != ROOT:
        shutil.copytree(ROOT / "archive" / "migrations", harness.SOURCE / "archive" / "migrations", dirs_exist_ok=True)


def db_url(redis: RedisProc, db: int) -> str:
    return f"redis://127.0.0.1:{redis.port}/{db}"


def pg_cpu(pg: PostgresServer) -> float:
    pid = pg.postmaster_pid()
    return tree_cpu_seconds(pid) if pid is not None else 0.0


def pg_scalar(url: str, query: str, *params: Any) -> int:
    import psycopg

    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute(query, params).fetchone()
        return int(row[0]) if row else 0


def pg_rows(url: str) -> int:
    return pg_scalar(url, "SELECT count(*) FROM archive_events")


def clear_db(client: Any, keep: str) -> None:
    """Delete every key of one Redis database but the archive stream: FLUSHDB would delete the stream under the
    writers' blocked XREADGROUP."""
    pipe = client.pipeline(transaction=False)
    for key in client.scan_iter(count=5000):
        if key != keep:
            pipe.delete(key)
    pipe.execute()


def log_count(server: Gunicorn, needle: str) -> int:
    return server.logs().count(needle)


# ----- A1: the writer alone --------------------------------------------------------------------------------


def bench_writer(args: Any, redis: RedisProc, pg: PostgresServer, report: Report) -> None:
    from archive.journal import Journal
    from archive.store import ArchiveStore
    from archive.writer import ArchiveWriter
    from counters import Counters
    from redis_keys import RedisKeys
    from redis_link import RedisLink

    n = args.archive_events
    url = pg.create_database("archive_writer_bench")
    link, keys, counters = RedisLink(db_url(redis, WRITER_DB)), RedisKeys(PREFIX), Counters()
    client = Redis(port=redis.port, db=WRITER_DB, decode_responses=True)
    stream = keys.archive_stream()
    journal = Journal(link, keys, counters, enabled=True)
    store = ArchiveStore(url)
    # A short block: only the first step (the stream still empty) reads with nothing to take.
    writer = ArchiveWriter(store, journal, link, keys, counters, claim_idle_seconds=30, block_ms=100)
    writer.step()  # migrates, creates the consumer group; the stream is empty
    events = realistic_events(n, chats=max(n // 10, 1))
    chats = len({event.chat for event in events})
    text_chars = statistics.mean(len(event.text) for event in events)
    log(f"[A1] emitting {n:,} events of {chats:,} chats ({EMIT_CHUNK} per Journal.emit)")
    t0 = time.perf_counter()
    for i in range(0, n, EMIT_CHUNK):
        journal.emit(events[i : i + EMIT_CHUNK])
    emit_s = time.perf_counter() - t0
    if client.xlen(stream) != n:
        raise RuntimeError(f"stream holds {client.xlen(stream)} entries, {n} emitted")

    write_s = [0.0]
    original_write = store.write

    def timed_write(batch: Any) -> int:
        t = time.perf_counter()
        try:
            return original_write(batch)
        finally:
            write_s[0] += time.perf_counter() - t

    store.write = timed_write  # type: ignore[method-assign]  # bench-only timer around the insert
    log(f"[A1] writing {n:,} events with ArchiveWriter.step() (batch {writer.batch_size})")
    cpu0, rcpu0, pcpu0, sys0 = time.process_time(), redis.cpu(), pg_cpu(pg), system_cpu()
    t0 = time.perf_counter()
    steps = 0
    deadline = time.time() + 300
    while client.xlen(stream) and time.time() < deadline:
        writer.step()
        steps += 1
    wall = time.perf_counter() - t0
    cpu1, rcpu1, pcpu1, sys1 = time.process_time(), redis.cpu(), pg_cpu(pg), system_cpu()
    rows = pg_rows(url)
    left = client.xlen(stream)
    writer.stop()
    rate = rows / wall
    machine = machine_window(sys0, sys1)
    rest = wall - write_s[0]
    report.add(
        "A1",
        f"Archive writer into PostgreSQL: {n:,} events ({chats:,} chats, customer+bot messages, texts "
        f"{text_chars:.0f} chars avg) already in the stream, `ArchiveWriter.step()` until empty",
        f"{rate:,.0f} events/s ({rows:,} rows in {secs(wall)}, {steps} batches; {left} left in the stream)",
        f">= {WRITER_TARGET_EVENTS_PER_SECOND:,} events/s",
        rate >= WRITER_TARGET_EVENTS_PER_SECOND and rows == n and left == 0,
    )
    report.notes.append(
        f"A1: of the {secs(wall)}, `ArchiveStore.write` (building the 14 column arrays + the one INSERT ... unnest) "
        f"took {secs(write_s[0])} ({write_s[0] / wall:.0%}), the rest (XREADGROUP x2 + XAUTOCLAIM, "
        f"Event.decode of each entry, XACK+XDEL) {secs(rest)}; CPU per 1,000 events: bench process "
        f"{(cpu1 - cpu0) / n * 1e6:.0f} ms, PostgreSQL {(pcpu1 - pcpu0) / n * 1e6:.0f} ms, redis-server "
        f"{(rcpu1 - rcpu0) / n * 1e6:.0f} ms; machine busy {machine['busy_pct']:.0f}%. Emitting them took "
        f"{secs(emit_s)} ({n / emit_s:,.0f} events/s, {EMIT_CHUNK} per Journal.emit, one pipeline of XADDs each). "
        "PostgreSQL runs with fsync=off (tests/postgres_server.py), so the disk is not measured."
    )
    report.raw["A1_writer"] = {
        "events": n,
        "chats": chats,
        "rows": rows,
        "left": left,
        "wall": wall,
        "rate": rate,
        "store_write_s": write_s[0],
        "emit_s": emit_s,
        "cpu_bench_s": cpu1 - cpu0,
        "cpu_pg_s": pcpu1 - pcpu0,
        "cpu_redis_s": rcpu1 - rcpu0,
        "machine": machine,
    }
    log(f"[A1] {rate:,.0f} events/s ({rows:,} rows, store.write {write_s[0] / wall:.0%} of the time)")


# ----- A2 + A3: the service with the archive off and on -----------------------------------------------------


def webhook_windows_together(
    args: Any, servers: dict[str, Gunicorn], seconds: float, tag: int, expect: dict[str, bytes] | None = None
) -> dict[str, dict[str, Any]]:
    """The same closed-loop load on every server at the same time (each its own load processes): the servers share
    the machine's moment, so a drift of the shared machine, which moves one server's rate by 10 % and more from one
    window to the next, moves both alike, and the ratio of their rates is what each request costs them. The
    connections are split between the servers, so the machine carries the load of one server alone. `expect`: per
    server, what an answer must contain to count (loadgen.closed_loop's default: `"buffered"`)."""
    per_proc = max(1, args.conns // (len(servers) * args.load_procs))
    start_at = time.time() + 2.0
    loads = {}
    order = list(servers.items())
    if tag % 2:  # every other round the other server's load starts first, so that neither is favoured by it
        order.reverse()
    for n, (name, server) in enumerate(order):
        kwargs = [
            {
                "port": server.port,
                "proc_index": n * args.load_procs + i,
                "threads": per_proc,
                "start_at": start_at,
                "warmup": 1.0,
                "duration": seconds,
                "chats": args.tp_chats,
                "run_tag": tag,
                **({"expect": expect[name]} if expect and name in expect else {}),
            }
            for i in range(args.load_procs)
        ]
        loads[name] = run_load(loadgen.closed_loop, kwargs)
    sleep_until(start_at + 1.0)
    cpu0 = {name: server.cpu() for name, server in servers.items()}
    sleep_until(start_at + 1.0 + seconds)
    cpu1 = {name: server.cpu() for name, server in servers.items()}
    windows = {}
    for name, (procs, queue) in loads.items():
        results = collect(procs, queue, timeout=seconds + 60)
        windows[name] = {
            "ok": sum(r["ok"] for r in results),
            "errors": sum(r["errors"] + r["not_buffered"] for r in results),
            "err_samples": [sample for r in results for sample in r["err_samples"]][:3],
            "lat": [x for r in results for x in r["lat"]],
            "cpu": cpu1[name] - cpu0[name],
            "seconds": seconds,
        }
    return windows


def side_by_side(
    args: Any,
    servers: dict[str, Gunicorn],
    *,
    rounds: int,
    seconds: float,
    tag: int,
    row: str,
    expect: dict[str, bytes] | None = None,
) -> tuple[dict[str, dict[str, Any]], list[float]]:
    """`rounds` of webhook_windows_together on two servers: per server its totals (rate, errors, latency, CPU per
    request, per-round rates), and each round's ratio of the second server's requests to the first's."""
    windows: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    for i in range(rounds):
        log(f"[{row}] round {i + 1}/{rounds}: {' and '.join(servers)} loaded together, {seconds:.0f} s")
        for name, window in webhook_windows_together(args, servers, seconds, tag=tag + i, expect=expect).items():
            windows[name].append(window)
    totals: dict[str, dict[str, Any]] = {}
    for name, runs in windows.items():
        ok = sum(w["ok"] for w in runs)
        lat = [x for w in runs for x in w["lat"]]
        totals[name] = {
            "ok": ok,
            "rate": ok / sum(w["seconds"] for w in runs),
            "errors": sum(w["errors"] for w in runs),
            "err_samples": [sample for w in runs for sample in w["err_samples"]][:5],
            "p50": pct(lat, 50),
            "p99": pct(lat, 99),
            "cpu_ms": sum(w["cpu"] for w in runs) / max(ok, 1) * 1000,
            "windows": [w["ok"] / w["seconds"] for w in runs],
        }
    first, second = windows.values()
    ratios = [b["ok"] / a["ok"] if a["ok"] else 0.0 for a, b in zip(first, second, strict=True)]
    return totals, ratios


def _time_to(sends: list[tuple[str, float]], share: float, start: float) -> float:
    """Seconds from `start` until `share` of these sends were made."""
    if not sends:
        return float("nan")
    times = sorted(at for _, at in sends)
    return times[min(len(times) - 1, max(0, round(share * len(times)) - 1))] - start


def drain(
    args: Any, redis: RedisProc, fakes: FakeHost, servers: dict[str, Gunicorn], first_chat: int, pg_url: str
) -> dict[str, dict[str, Any]]:
    """run.py's drain on the given servers ("off", "on" or both): n chats each (their own chat numbers, in their own
    Redis db), all due in the same second. For the archive-on server, also when PostgreSQL had every event of its
    drain: the next drain starts once the writers are done."""
    from redis_keys import RedisKeys

    n = args.archive_drain_chats
    stream = RedisKeys(PREFIX).archive_stream()
    dbs = {"off": OFF_DB, "on": ON_DB}
    clients = {name: Redis(port=redis.port, db=db, decode_responses=True) for name, db in dbs.items()}
    for client in clients.values():
        clear_db(client, keep=stream)
    fakes.reset()
    rows0 = pg_rows(pg_url)
    id0 = pg_scalar(pg_url, "SELECT coalesce(max(id), 0) FROM archive_events")
    chats = {name: [first_chat + dbs[name] * 1_000_000 + i for i in range(n)] for name in servers}
    t_due = time.time() + 2.0 + 2 * n * 0.0006
    # Every other round the other server's chats are buffered first (the order Redis sees them in), so that neither
    # is favoured by it.
    for name in list(servers)[:: 1 if first_chat // 100_000 % 2 == 0 else -1]:
        preload(make_buffer(db_url(redis, dbs[name]), 5.0), chats[name], [t_due] * n, 5.0)
    sleep_until(t_due - 0.05)
    cpu0 = {name: server.cpu() for name, server in servers.items()}
    wait_sends(fakes, len(servers) * n, t_due + args.drain_timeout)
    cpu1 = {name: server.cpu() for name, server in servers.items()}
    sends = fakes.sends()
    results: dict[str, dict[str, Any]] = {}
    for name in servers:
        expected = {loadgen.jid_for(c) for c in chats[name]}
        mine = [(number, at) for number, at in sends if number in expected]
        numbers = {number for number, _ in mine}
        results[name] = {
            "drain": (max(at for _, at in mine) - t_due) if len(numbers) >= n else float("nan"),
            # When half and 90 % of its replies were out: the last few sends are a tail that moves by +-20 % from one
            # round to the next even between two identical servers.
            "p50": _time_to(mine, 0.5, t_due),
            "p90": _time_to(mine, 0.9, t_due),
            "missing": n - len(numbers),
            "duplicates": len(mine) - len(numbers),
            "cpu_per_reply_ms": (cpu1[name] - cpu0[name]) / max(len(mine), 1) * 1000,
        }
    # Every event of the "on" drain is in PostgreSQL once the stream is empty and the row count stays put (a reply
    # makes at least 2: the customer's message and the bot's part; the worker emits its last ones after the send).
    if "on" not in servers:
        return results
    archived, rows, last = float("nan"), 0, -1
    until = time.time() + 60
    while time.time() < until:
        rows = pg_rows(pg_url) - rows0
        if clients["on"].xlen(stream) == 0 and rows >= 2 * n and rows == last:
            archived = time.time() - t_due - 0.05
            break
        last = rows
        time.sleep(0.05)
    # Rows of one INSERT share archived_at (now() is the transaction's time): distinct values = batches written.
    batches = pg_scalar(pg_url, "SELECT count(DISTINCT archived_at) FROM archive_events WHERE id > %s", id0)
    results["on"].update({"archived": archived, "rows": rows, "batches": batches})
    return results


def bench_side_by_side(args: Any, redis: RedisProc, fakes: FakeHost, pg: PostgresServer, report: Report) -> None:
    pg_url = pg.create_database("archive_service_bench")
    servers: dict[str, Gunicorn] = {}
    for name, db, extra in (("off", OFF_DB, {}), ("on", ON_DB, {"DATABASE_URL": pg_url})):
        env = base_env(db_url(redis, db), fakes, DEBOUNCE_SECONDS=600, **extra)
        servers[name] = Gunicorn(
            env, workers=args.workers, log_path=RESULTS_DIR / "logs" / f"gunicorn-archive-{name}.log"
        )
        report.servers.append(servers[name])
    log(f"[A2] starting two gunicorn sync -w {args.workers}: DATABASE_URL empty (Redis db 0) and set (db 1)")
    for server in servers.values():
        server.start()
    try:
        for server in servers.values():
            server.wait_ready()
        # -- A2: webhook max throughput, both servers loaded at the same time
        rounds = args.archive_windows
        tp, ratios = side_by_side(args, servers, rounds=rounds, seconds=args.archive_window, tag=0xA200, row="A2")
        ratio = statistics.median(ratios)
        report.add(
            "A2",
            f"Webhook max throughput, archive off vs on (`sync -w {args.workers}` each, {args.conns} conns split "
            f"between them, both loaded at the same time, {rounds} rounds of {args.archive_window:.0f} s; median of "
            "the rounds' ratios)",
            f"off {tp['off']['rate']:,.0f} / on {tp['on']['rate']:,.0f} req/s, **{ratio:.2f}x** "
            f"(rounds {min(ratios):.2f}-{max(ratios):.2f}x; "
            f"p99 {ms(tp['off']['p99'])} / {ms(tp['on']['p99'])}; errors {tp['off']['errors']:.0f} / "
            f"{tp['on']['errors']:.0f})",
            f"on >= {1 - SIDE_BY_SIDE_TOLERANCE:.2f}x off",
            ratio >= 1 - SIDE_BY_SIDE_TOLERANCE and tp["off"]["errors"] == 0 and tp["on"]["errors"] == 0,
        )
        report.notes.append(
            "A2: both servers up and loaded at once; per round off "
            + ", ".join(f"{x:,.0f}" for x in tp["off"]["windows"])
            + " / on "
            + ", ".join(f"{x:,.0f}" for x in tp["on"]["windows"])
            + f" req/s; server CPU {tp['off']['cpu_ms']:.2f} / {tp['on']['cpu_ms']:.2f} ms/webhook; closed-loop "
            f"p50 {ms(tp['off']['p50'])} / {ms(tp['on']['p50'])}. A customer's webhook emits no archive event: "
            "what the archive adds to this path is the writer thread in each gunicorn worker."
        )
        # -- A3: drain, each server alone, in pairs ordered off-on then on-off (ABBA), so that a machine getting
        # slower or faster during the row weighs on both sides alike. Both draining at the same time measured how the
        # scheduler split the two cores between them more than what each costs: two identical servers came out at
        # 0.76-1.15x from one round to the next.
        drains: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
        for i in range(args.archive_drains):
            order = ("off", "on") if i % 2 == 0 else ("on", "off")
            log(f"[A3] pair {i + 1}/{args.archive_drains}: {args.archive_drain_chats:,} chats due at once, {order}")
            for k, name in enumerate(order):
                first_chat = 2_000_000 + (2 * i + k) * 100_000
                drains[name].append(drain(args, redis, fakes, {name: servers[name]}, first_chat, pg_url)[name])
            log(f"[A3] off {secs(drains['off'][-1]['drain'])} / on {secs(drains['on'][-1]['drain'])}")
        off_d = [d["drain"] for d in drains["off"]]
        on_d = [d["drain"] for d in drains["on"]]
        d_ratios = [on / off for off, on in zip(off_d, on_d, strict=True)]
        d_ratio = statistics.median(d_ratios)
        n = args.archive_drain_chats
        flawless = all(d["missing"] == 0 and d["duplicates"] == 0 for runs in drains.values() for d in runs)
        report.add(
            "A3",
            f"Drain, archive off vs on: {n:,} chats due in the same second -> {n:,} sendText, each server alone, "
            f"{len(d_ratios)} pairs (off-on, on-off, ...); median of the pairs' on/off time ratios",
            f"off {secs(statistics.mean(off_d))} / on {secs(statistics.mean(on_d))} (means) = **{d_ratio:.2f}x** "
            f"time (pairs {min(d_ratios):.2f}-{max(d_ratios):.2f}x)",
            f"on <= {1 + SIDE_BY_SIDE_TOLERANCE:.2f}x off",
            d_ratio <= 1 + SIDE_BY_SIDE_TOLERANCE and flawless,
        )
        on_lines = ", ".join(
            f"{secs(d['drain'])} (all {d['rows']:,} events in PostgreSQL at +{secs(d['archived'])}, in "
            f"{d['batches']:,} INSERTs)"
            for d in drains["on"]
        )
        redis_down = log_count(servers["on"], "redis unavailable")
        redis_down_off = log_count(servers["off"], "redis unavailable")
        report.notes.append(
            f"A3: runs off {', '.join(secs(x) for x in off_d)}; on {on_lines}; half / 90 % of the replies out at "
            + ", ".join(f"{secs(d['p50'])} / {secs(d['p90'])}" for d in drains["off"])
            + " (off) and "
            + ", ".join(f"{secs(d['p50'])} / {secs(d['p90'])}" for d in drains["on"])
            + f" (on); server CPU "
            f"{statistics.mean(d['cpu_per_reply_ms'] for d in drains['off']):.1f} / "
            f"{statistics.mean(d['cpu_per_reply_ms'] for d in drains['on']):.1f} ms/reply (archive on: the worker's "
            "XADDs and the writer threads' reads and inserts); "
            f"{'0 missing, 0 duplicates' if flawless else 'MISSING OR DUPLICATE SENDS, see raw'}."
        )
        if redis_down:
            report.notes.append(
                f"A2/A3 WARNING: the archive-on server logged 'redis unavailable' {redis_down} times ("
                f"{redis_down_off} with the archive off): its webhooks and worker used the in-process fallback for "
                "part of the run, so its figures are not the archive's cost."
            )
        report.raw["A2_webhook"] = tp
        report.raw["A3_drain"] = drains
        report.raw["A_redis_unavailable_logged"] = {"on": redis_down, "off": redis_down_off}
    finally:
        for server in servers.values():
            server.stop()


def bench_archive(args: Any, redis: RedisProc, fakes: FakeHost, report: Report) -> None:
    """Rows A1-A3 with a PostgreSQL of their own, thrown away at the end."""
    quick = getattr(args, "quick", False)
    defaults = {
        "archive_events": (50_000, 10_000),
        "archive_windows": (5, 1),  # rounds of both servers loaded at the same time
        "archive_drains": (5, 1),  # pairs of drains (off then on, on then off, ...)
        "archive_window": (4.0, 3.0),
        "archive_drain_chats": (2_000, 500),
    }
    for name, (full, small) in defaults.items():
        if getattr(args, name, None) is None:
            setattr(args, name, small if quick else full)
    # Imported here, in the bench's own process: the load processes (spawn) re-import this module with the source
    # snapshot first on sys.path, whose tests/ holds only what harness.snapshot_source copies.
    from tests.postgres_server import PostgresServer

    ship_migrations()
    redis.client.flushall()
    workdir = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    pg = PostgresServer(workdir)
    try:
        log(f"[A] starting PostgreSQL in {workdir}")
        pg.start()
        bench_writer(args, redis, pg, report)
        bench_side_by_side(args, redis, fakes, pg, report)
    finally:
        pg.close()
        shutil.rmtree(workdir, ignore_errors=True)
        redis.client.flushall()


def main(argv: list[str] | None = None) -> int:
    import run

    return run.run_alone("A", "archive.md", argv)


if __name__ == "__main__":
    sys.exit(main())
