"""Benchmark of the WhatsApp assistant on this machine: `make bench` or `.venv/bin/python bench/run.py [--quick]`.

Starts its own redis-server (free port, no persistence), a fake Gemini (50 ms per answer) and a fake
Evolution sendText in a separate process, runs the service under gunicorn with env vars only, drives it
from separate load processes, prints one markdown table and writes it to bench/results/latest.md.

Measurements (`--only` picks some; H runs first)
  H  the hot path's ceiling (bench/hotpath_bench.py): webhook max throughput of an empty Flask app
     (bench/ceiling_app.py) and of the product under identical gunicorns, in alternating windows; target: the median
     of the rounds' product/ceiling ratios >= 0.80
  1  webhook max throughput (closed loop) and ack latency at a paced 500 req/s (open loop), for
     `gunicorn -w 4` (sync; ack p99 < 5 ms) and `--worker-class gthread --threads 4`
  2  deadline -> sendText lag with 10,000 chats buffered at once, deadlines spread over 60 s
  3  drain of 2,000 chats due in the same second, with history, knowledge and a text burst: each chat holds two
     earlier turns of history and a burst of three customer texts, the server has KNOWLEDGE_DIR=examples/knowledge;
     target >= 600 replies/s
  4  CPU per reply (gunicorn master + workers, from /proc) during 3; target <= 2.5 ms
  3w the same drain with web and workers apart: `gunicorn -w 2` with WORKER_ENABLED=false (it only buffers) and
     `--workers` processes of `python worker.py` answering (info: the topology's cost beside row 3)
  T  several businesses (bench/tenants_bench.py): 50 tenants with a 200-chunk knowledge folder each against one
     tenant on the same 50 instances, alternated: T1 memory per worker within KNOWLEDGE_CACHE_MB, T2 webhook
     throughput and T3 drain (targets: within 10 % of one tenant)
  1c, 3c  rows 1a and 3 again on a Redis Cluster of 3 masters with a replica each (CACHE_REDIS_CLUSTER, 16 shards),
     started in the same run (info: the cluster's cost beside the single server)
  5  Redis memory per buffered chat (INFO used_memory), seen/dedupe marker included; target <= 800 B beyond the text
  A  the archive (bench/archive_bench.py, its own PostgreSQL): writer events/s, webhook and drain with it off vs on
  M  the metrics (bench/metrics_bench.py): webhook throughput with METRICS_ENABLED false vs true

`--profile` runs bench/profile_paths.py instead of the rows (`--profile-tag`, default "after", names its files under
bench/profiles/): the profiler's own CPU would distort every figure measured beside it, so the two never share a run.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import harness  # noqa: E402
import loadgen  # noqa: E402
from harness import (  # noqa: E402
    ROOT,
    Apart,
    ClusterProc,
    FakeHost,
    Gunicorn,
    RedisProc,
    machine_window,
    system_cpu,
)

RESULTS_DIR = BENCH_DIR / "results"
PREFIX = "wa_assistant"  # the service default, so key lengths (and memory) are the production ones
KNOWLEDGE_DIR = ROOT / "examples" / "knowledge"  # the working tree's: the source snapshot holds only .py files
ACK_P99_TARGET = 0.005  # row 1a
DRAIN_TARGET_REPLIES_PER_SECOND = 600.0  # row 3
CPU_PER_REPLY_TARGET = 0.0025  # row 4, seconds
MEMORY_TARGET_BEYOND_TEXT = 800  # row 5, bytes
BURST_STEP = 0.01  # seconds between a preloaded burst's messages; short, so no earlier deadline passes mid-preload


# ----- small helpers ------------------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.1f} ms"


def secs(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds:.2f} s"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sleep_until(t: float) -> None:
    delay = t - time.time()
    if delay > 0:
        time.sleep(delay)


@dataclass
class Row:
    key: str
    what: str
    measured: str
    target: str
    verdict: str  # PASS / FAIL / info


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    servers: list[Any] = field(default_factory=list)

    def add(self, key: str, what: str, measured: str, target: str, ok: bool | None) -> None:
        verdict = "info" if ok is None else ("PASS" if ok else "FAIL")
        self.rows.append(Row(key, what, measured, target, verdict))

    def markdown(self, header: str) -> str:
        lines = [header, "", "| # | Measurement | Measured | Target | Result |", "|---|---|---|---|---|"]
        for r in self.rows:
            lines.append(f"| {r.key} | {r.what} | {r.measured} | {r.target} | **{r.verdict}** |")
        if self.notes:
            lines += ["", "Notes (side-by-side numbers; the machine is shared and noisy):", ""]
            lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


def machine_busy(seconds: float) -> float:
    before = system_cpu()
    time.sleep(seconds)
    return machine_window(before, system_cpu())["busy_pct"]


def others_cores(machine: dict[str, float], window: float, ours_cpu_s: float) -> float:
    """CPU (in cores) the machine spent on processes that are not the bench's during `window` seconds."""
    busy_core_s = (machine["busy_pct"] - machine["irq_pct"]) / 100 * (os.cpu_count() or 1) * window
    return max(busy_core_s - ours_cpu_s, 0.0) / window


def run_load(target: Any, kwargs_list: list[dict[str, Any]]) -> tuple[list[Any], list[dict[str, Any]]]:
    """Start one spawn-ed process per kwargs; returns (processes, queue) -- call collect() after."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=target, args=(kw.pop("port"),), kwargs={**kw, "result_q": queue}, daemon=True)
        for kw in kwargs_list
    ]
    for p in procs:
        p.start()
    return procs, queue


def collect(procs: list[Any], queue: Any, timeout: float) -> list[dict[str, Any]]:
    out = [queue.get(timeout=timeout) for _ in procs]
    for p in procs:
        p.join(10)
    return out


def base_env(redis_url: str, fakes: FakeHost, **overrides: Any) -> dict[str, Any]:
    env: dict[str, Any] = {
        "LOG_LEVEL": "WARNING",
        "GEMINI_API_KEY": "x",
        "GEMINI_BASE_URL": fakes.gemini_url,
        "GEMINI_TIMEOUT_SECONDS": "10",
        "EVOLUTION_API": fakes.evolution_url,
        "AUTHENTICATION_API_KEY": "bench-apikey",
        "CACHE_REDIS_URI": redis_url,
        "CACHE_REDIS_PREFIX_KEY": PREFIX,
        "DEBOUNCE_MAX_WAIT_SECONDS": "3600",
        "WORKER_ENABLED": "true",
        # Not paced: the rows measure what the service itself can do; pacing would hold one number to 2 sends/s.
        "OUTBOUND_RATE_PER_SECOND_EVOLUTION": "0",
        "OUTBOUND_CUSTOMER_GAP_SECONDS": "0",
    }
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def link_and_keys(redis_url: str, shards: int) -> tuple[Any, Any]:
    """The service's RedisLink and RedisKeys for the bench's Redis (`shards` > 1: a Redis Cluster). Keyword
    arguments only where needed: `--source` checkouts from before the cluster work take neither."""
    from redis_keys import RedisKeys
    from redis_link import RedisLink

    if shards > 1:
        return RedisLink(redis_url, cluster=True), RedisKeys(PREFIX, shards=shards)
    return RedisLink(redis_url), RedisKeys(PREFIX)


def make_buffer(redis_url: str, debounce: float, *, shards: int = 1) -> Any:
    """The service's Buffer on the bench's Redis (`shards` > 1: a Redis Cluster, keys sharded as the service's)."""
    from buffer import Buffer

    return Buffer(
        *link_and_keys(redis_url, shards),
        debounce_seconds=debounce,
        max_wait_seconds=3600,
        dedup_ttl_seconds=86400,
        lease_seconds=60,
    )


def make_history(redis_url: str, *, shards: int = 1) -> Any:
    """The service's chat history on the bench's Redis, with the service's default turn cap and expiry."""
    from config import Settings
    from memory import History

    defaults = Settings()
    return History(
        *link_and_keys(redis_url, shards),
        max_turns=defaults.history_max_turns,
        ttl_seconds=defaults.history_ttl_seconds,
    )


def chat_ref(chat: int) -> Any:
    from models import ChatRef

    return ChatRef(gateway="evolution", instance=loadgen.INSTANCE, chat_id=loadgen.jid_for(chat))


MESSAGE_TEXT = "Oi! Vocês têm o tênis 42 em estoque? Qual o preço?"


def preload_history(history: Any, chats: list[int], pairs: Sequence[tuple[str, str]], at: float) -> None:
    """Give each chat earlier turns (customer, reply) through the service's History.append, as a sent reply does."""
    from memory import Turn

    turns = [
        Turn(role=role, text=text, at=at) for pair in pairs for role, text in zip(("user", "model"), pair, strict=True)
    ]
    for chat in chats:
        history.append(chat_ref(chat), turns)


def preload(
    buffer: Any,
    chats: list[int],
    deadlines: list[float],
    debounce: float,
    texts: Sequence[str] = (MESSAGE_TEXT,),
) -> list[float]:
    """Buffer each chat's `texts` (one message each, BURST_STEP apart) through the service's own Buffer.append, with
    `now` chosen so each chat's deadline after its last message is exactly the given one. Returns the time each chat's
    last append finished."""
    from models import IncomingMessage

    done = []
    last = len(texts) - 1
    for chat, deadline in zip(chats, deadlines, strict=True):
        ref = chat_ref(chat)
        for i, text in enumerate(texts):
            now = deadline - debounce - (last - i) * BURST_STEP
            message = IncomingMessage(
                chat=ref,
                # A single message keeps the id row 5 reads the seen marker of.
                message_id=f"3EB0{chat:016X}" + (f"{i:02X}" if last else ""),
                text=text,
                push_name="Cliente Bench",
                timestamp=int(now),
            )
            result = buffer.append(message, now=now)
            if not result.accepted or result.store != "redis":
                raise RuntimeError(f"preload failed for chat {chat}, message {i}: {result}")
        # Each append slides the deadline to its `now` + debounce: only the last one's is the chat's deadline.
        if abs(result.deadline - deadline) > 0.002:
            raise RuntimeError(f"preload of chat {chat} ended with deadline {result.deadline}, not {deadline}")
        done.append(time.time())
    return done


def wait_sends(fakes: FakeHost, expected: int, until: float) -> int:
    count = 0
    while time.time() < until:
        count = fakes.count()
        if count >= expected:
            return count
        time.sleep(0.05)
    return fakes.count()


# ----- 1: webhook throughput and ack latency ------------------------------------------------------------


def closed_loop_load(args: argparse.Namespace, port: int, **extra: Any) -> list[dict[str, Any]]:
    """The keyword arguments of `loadgen.closed_loop` for each load process: --conns connections over --load-procs
    processes, starting in 1.5 s, --warmup then --tp-seconds measured, over --tp-chats chats."""
    per_proc = max(1, args.conns // args.load_procs)
    start_at = time.time() + 1.5
    run_tag = int(time.time()) & 0xFFFF
    common = {"port": port, "threads": per_proc, "start_at": start_at, "warmup": args.warmup}
    common |= {"duration": args.tp_seconds, "chats": args.tp_chats, "run_tag": run_tag, **extra}
    return [{**common, "proc_index": i} for i in range(args.load_procs)]


def bench_webhook(
    args: argparse.Namespace, redis: RedisProc | ClusterProc, fakes: FakeHost, report: Report, cls: str
) -> None:
    label = f"sync -w {args.workers}" if cls == "sync" else f"gthread -w {args.workers} --threads {args.threads}"
    key = "1a" if cls == "sync" else "1b"
    if redis.cluster:  # row 1c: the same load on the 3-master cluster, beside 1a
        key, label = "1c", f"{label}, Redis Cluster of 3 masters + 3 replicas"
    # The 5 ms is for the production configuration (sync, 1a); gthread (1b) keeps the earlier 10 ms.
    ack_target = ACK_P99_TARGET if cls == "sync" else 0.010
    redis.client.flushall()
    env = base_env(redis.url, fakes, DEBOUNCE_SECONDS=600, **redis.env)
    server = Gunicorn(
        env,
        workers=args.workers,
        worker_class=cls,
        threads=args.threads,
        log_path=RESULTS_DIR / "logs" / f"gunicorn-webhook-{cls}.log",
    )
    log(f"[{key}] starting gunicorn {label}")
    report.servers.append(server)
    server.start().wait_ready()
    try:
        # -- max throughput, closed loop
        kwargs = closed_loop_load(args, server.port)
        procs_n, per_proc = len(kwargs), kwargs[0]["threads"]
        start_at, run_tag = kwargs[0]["start_at"], kwargs[0]["run_tag"]
        measure_from = start_at + args.warmup
        stop_at = measure_from + args.tp_seconds
        log(f"[{key}] max throughput: {procs_n} load processes x {per_proc} connections, {args.tp_seconds:.0f} s")
        procs, queue = run_load(loadgen.closed_loop, kwargs)
        sleep_until(measure_from)
        cpu0, rcpu0, sys0 = server.cpu(), redis.cpu(), system_cpu()
        sleep_until(stop_at)
        cpu1, rcpu1, sys1 = server.cpu(), redis.cpu(), system_cpu()
        results = collect(procs, queue, timeout=args.tp_seconds + args.warmup + 60)
        ok = sum(r["ok"] for r in results)
        errors = sum(r["errors"] for r in results)
        not_buffered = sum(r["not_buffered"] for r in results)
        lat = [x for r in results for x in r["lat"]]
        load_cpu = sum(r["cpu"] for r in results)
        connects = sum(r["connects"] for r in results)
        answered = sum(r["sent"] for r in results)
        rate = ok / args.tp_seconds
        srv_cpu_ms = (cpu1 - cpu0) / max(ok, 1) * 1000
        redis_cpu_ms = (rcpu1 - rcpu0) / max(ok, 1) * 1000
        machine = machine_window(sys0, sys1)
        total_s = args.warmup + args.tp_seconds + 1.5
        others = others_cores(
            machine, args.tp_seconds, (cpu1 - cpu0) + (rcpu1 - rcpu0) + load_cpu * args.tp_seconds / total_s
        )
        report.add(
            key,
            f"Webhook max throughput, `{label}` ({procs_n}x{per_proc} conns, unique ids, {args.tp_chats:,} chats)",
            f"{rate:,.0f} req/s ({rate / 2000:.2f}x target; errors {errors}, non-buffered {not_buffered})",
            ">= 2,000 req/s" if not redis.cluster else "info (beside 1a)",
            rate >= 2000 and errors == 0 if not redis.cluster else None,
        )
        report.notes.append(
            f"{key} `{label}` at max load: server CPU {srv_cpu_ms:.2f} ms/webhook (gunicorn master+workers) "
            f"-> CPU ceiling {2000 / srv_cpu_ms:,.0f} req/s on 2 cores with nothing else running; redis-server "
            f"{redis_cpu_ms:.3f} ms/webhook; load generator {load_cpu / total_s * 100:.0f}% of one core; "
            f"machine busy {machine['busy_pct']:.0f}% of 2 cores: irq/softirq (loopback TCP) "
            f"{machine['irq_pct'] * 2:.0f}% of one core, processes outside the bench ~{others:.0%} of one core, "
            f"steal {machine['steal_pct']:.1f}%; closed-loop latency p50 {ms(pct(lat, 50))} p99 "
            f"{ms(pct(lat, 99))}; {connects:,} TCP connects for {answered:,} requests incl. warm-up "
            f"({'keep-alive' if connects < answered / 10 else 'the sync worker closes every connection'})."
        )
        report.raw[f"{key}_throughput"] = {
            "rate": rate,
            "ok": ok,
            "errors": errors,
            "not_buffered": not_buffered,
            "err_samples": [s for r in results for s in r["err_samples"]][:5],
            "server_cpu_ms_per_req": srv_cpu_ms,
            "redis_cpu_ms_per_req": redis_cpu_ms,
            "load_cpu_s": load_cpu,
            "connects": connects,
            "machine": machine,
            "lat_p50": pct(lat, 50),
            "lat_p99": pct(lat, 99),
        }
        log(f"[{key}] {rate:,.0f} req/s, server {srv_cpu_ms:.2f} ms CPU/req, errors {errors}")

        # -- ack latency, paced open loop
        time.sleep(1.0)
        count = int(args.paced_rate * args.paced_seconds)
        start_at = time.time() + 2.0
        kwargs = [
            {
                "port": server.port,
                "proc_index": 9,
                "threads": args.paced_threads,
                "start_at": start_at,
                "rate": args.paced_rate,
                "count": count,
                "chats": args.tp_chats,
                "chat_offset": 0,
                "run_tag": run_tag,
            }
        ]
        log(f"[{key}] ack latency: {args.paced_rate:.0f} req/s paced for {args.paced_seconds:.0f} s")
        procs, queue = run_load(loadgen.paced, kwargs)
        sleep_until(start_at)
        cpu0, sys0 = server.cpu(), system_cpu()
        result = collect(procs, queue, timeout=args.paced_seconds + 60)[0]
        cpu1, sys1 = server.cpu(), system_cpu()
        recs = result["records"]
        good = [r for r in recs if r[4]]
        failed = len(recs) - len(good)
        from_intended = [r[3] - r[1] for r in good]
        from_sent = [r[3] - r[2] for r in good]
        lateness = [r[2] - r[1] for r in recs]
        span = (max(r[3] for r in recs) - start_at) if recs else float("nan")
        achieved = len(good) / span if span and span > 0 else float("nan")
        p50, p99 = pct(from_intended, 50), pct(from_intended, 99)
        machine = machine_window(sys0, sys1)
        report.add(
            key,
            f"Ack latency at {args.paced_rate:.0f} req/s paced (open loop, from intended send), `{label}`",
            f"p50 {ms(p50)} / p99 {ms(p99)} (max {ms(max(from_intended, default=float('nan')))}; "
            f"{len(good):,} ok, {failed} failed)",
            f"p99 < {ack_target * 1000:.0f} ms" if not redis.cluster else "info (beside 1a)",
            p99 < ack_target and failed == 0 if not redis.cluster else None,
        )
        report.notes.append(
            f"{key} paced: p99.9 {ms(pct(from_intended, 99.9))}; measured from the actual send p50 "
            f"{ms(pct(from_sent, 50))} p99 {ms(pct(from_sent, 99))}; client send lateness p99 "
            f"{ms(pct(lateness, 99))}; achieved {achieved:,.0f} req/s; server CPU "
            f"{(cpu1 - cpu0) / max(len(good), 1) * 1000:.2f} ms/webhook; machine busy {machine['busy_pct']:.0f}%, "
            f"steal {machine['steal_pct']:.1f}%; {result['connects']:,} TCP connects."
        )
        report.raw[f"{key}_paced"] = {
            "p50": p50,
            "p99": p99,
            "p999": pct(from_intended, 99.9),
            "sent_p50": pct(from_sent, 50),
            "sent_p99": pct(from_sent, 99),
            "lateness_p99": pct(lateness, 99),
            "ok": len(good),
            "failed": failed,
            "err_samples": result["err_samples"],
            "connects": result["connects"],
            "machine": machine,
        }
        log(f"[{key}] paced p50 {ms(p50)} p99 {ms(p99)} failed {failed}")
    finally:
        server.stop()


# ----- 2: deadline -> sendText lag ------------------------------------------------------------------------


def bench_lag(args: argparse.Namespace, redis: RedisProc, fakes: FakeHost, report: Report) -> None:
    n, spread = args.lag_chats, args.lag_spread
    redis.client.flushall()
    fakes.reset()
    debounce = spread if args.lag_via_http else 5.0
    env = base_env(redis.url, fakes, DEBOUNCE_SECONDS=debounce)
    server = Gunicorn(env, workers=args.workers, log_path=RESULTS_DIR / "logs" / "gunicorn-lag.log")
    log(f"[2] starting gunicorn sync -w {args.workers}; {n:,} chats, deadlines over {spread:.0f} s")
    report.servers.append(server)
    server.start().wait_ready()
    chats = [100_000 + i for i in range(n)]
    try:
        cpu0, sys0 = server.cpu(), system_cpu()
        if args.lag_via_http:
            # Post one message per chat over `spread` seconds with DEBOUNCE_SECONDS = spread: when the last
            # is posted, all n are buffered and their deadlines cover `spread` seconds.
            start_at = time.time() + 2.0
            procs, queue = run_load(
                loadgen.paced,
                [
                    {
                        "port": server.port,
                        "proc_index": 1,
                        "threads": 8,
                        "start_at": start_at,
                        "rate": n / spread,
                        "count": n,
                        "chats": 10**9,
                        "chat_offset": chats[0],
                        "run_tag": 2,
                    }
                ],
            )
            result = collect(procs, queue, timeout=spread + 120)[0]
            deadline_of = {loadgen.jid_for(chats[0] + r[0]): r[2] + debounce for r in result["records"] if r[4]}
            late = 0
            how = (
                f"via HTTP: paced {n / spread:,.0f} req/s, DEBOUNCE_SECONDS={debounce:.0f}; expected deadline = "
                "client send time + debounce (biased early by <= the ack latency, so lag is overstated by that)"
            )
            last_deadline = max(deadline_of.values())
        else:
            buffer = make_buffer(redis.url, debounce)
            lead = 1.5 + n * 0.0005
            t_first = time.time() + lead
            deadlines = [t_first + spread * i / n for i in range(n)]
            done = preload(buffer, chats, deadlines, debounce)
            late = sum(1 for d, t in zip(deadlines, done, strict=True) if t > d)
            deadline_of = {loadgen.jid_for(c): d for c, d in zip(chats, deadlines, strict=True)}
            how = (
                f"{n:,} chats buffered through Buffer.append (the service's own code, one message each) in "
                f"{done[-1] - (t_first - lead):.1f} s, done {t_first - done[-1]:.1f} s before the first deadline, "
                "so all were buffered at once; deadlines exact (no client-side bias)"
            )
            last_deadline = deadlines[-1]
        count = wait_sends(fakes, len(deadline_of), last_deadline + args.lag_timeout)
        cpu1, sys1 = server.cpu(), system_cpu()
        sends = fakes.sends()
        first_send: dict[str, float] = {}
        duplicates = 0
        for number, at in sends:
            if number in first_send:
                duplicates += 1
                first_send[number] = min(first_send[number], at)
            else:
                first_send[number] = at
        lags = [first_send[j] - d for j, d in deadline_of.items() if j in first_send]
        missing = len(deadline_of) - len(lags)
        p50, p99 = pct(lags, 50), pct(lags, 99)
        machine = machine_window(sys0, sys1)
        report.add(
            "2",
            f"Deadline -> sendText lag, {n:,} chats buffered at once, deadlines over {spread:.0f} s "
            f"(Gemini {args.gemini_delay * 1000:.0f} ms)",
            f"p50 {secs(p50)} / p99 {secs(p99)} (max {secs(max(lags, default=float('nan')))}; "
            f"{len(lags):,} replied, {missing} missing, {duplicates} duplicate sends)",
            "p99 < 1 s",
            p99 < 1.0 and missing == 0 and duplicates == 0,
        )
        report.notes.append(
            f"2: {how}; "
            + (f"{late} appends finished after their deadline; " if not args.lag_via_http else "")
            + f"min lag {secs(min(lags, default=float('nan')))}; "
            f"server CPU {(cpu1 - cpu0) / max(len(lags), 1) * 1000:.1f} ms/reply over the run (idle polling "
            "included); machine busy "
            f"{machine['busy_pct']:.0f}%, steal {machine['steal_pct']:.1f}%."
        )
        report.raw["2_lag"] = {
            "p50": p50,
            "p99": p99,
            "max": max(lags, default=None),
            "replied": len(lags),
            "missing": missing,
            "duplicates": duplicates,
            "late_appends": late,
            "count": count,
            "machine": machine,
        }
        log(f"[2] lag p50 {secs(p50)} p99 {secs(p99)} missing {missing}")
    finally:
        server.stop()


# ----- 3 + 4: drain and CPU per reply ---------------------------------------------------------------------


def bench_drain(
    args: argparse.Namespace,
    redis: RedisProc | ClusterProc,
    fakes: FakeHost,
    report: Report,
    *,
    poll: float | None,
    key: str,
    apart: bool = False,
) -> None:
    from profile_paths import BURST, HISTORY_TURNS  # the reply profile's workload, so the two read alike

    n = args.drain_chats
    redis.client.flushall()
    fakes.reset()
    overrides: dict[str, Any] = {"DEBOUNCE_SECONDS": 5, "KNOWLEDGE_DIR": KNOWLEDGE_DIR}
    if poll is not None:
        overrides["WORKER_POLL_SECONDS"] = poll
    env = base_env(redis.url, fakes, **overrides, **redis.env)
    server: Gunicorn | Apart
    if apart:
        server = Apart(env, web_workers=2, workers=args.workers, log_dir=RESULTS_DIR / "logs")
    else:
        server = Gunicorn(env, workers=args.workers, log_path=RESULTS_DIR / "logs" / f"gunicorn-drain-{key}.log")
    poll_label = f"WORKER_POLL_SECONDS={poll}" if poll is not None else "default WORKER_POLL_SECONDS (0.2)"
    log(f"[{key}] starting {server.label} ({poll_label}); {n:,} chats due in the same second")
    report.servers.append(server)
    server.start().wait_ready()
    chats = [500_000 + i for i in range(n)]
    try:
        # History first: it has no deadline, so its writes need not fit in the lead time before the burst falls due.
        preload_history(make_history(redis.url, shards=redis.shards), chats, HISTORY_TURNS, at=time.time() - 3600)
        buffer = make_buffer(redis.url, 5.0, shards=redis.shards)
        t_due = time.time() + 1.5 + n * len(BURST) * 0.0007
        done = preload(buffer, chats, [t_due] * n, 5.0, texts=BURST)
        headroom = t_due - done[-1]
        sleep_until(t_due - 0.05)
        cpu0, rcpu0, fcpu0, sys0 = server.cpu(), redis.cpu(), fakes.cpu(), system_cpu()
        count = wait_sends(fakes, n, t_due + args.drain_timeout)
        # Let the last acks/history writes land before closing the CPU window.
        until = time.time() + 10
        while time.time() < until:
            if buffer.counts()["chats_pending"] + buffer.counts()["chats_in_progress"] == 0:
                break
            time.sleep(0.02)
        cpu1, rcpu1, fcpu1, sys1 = server.cpu(), redis.cpu(), fakes.cpu(), system_cpu()
        window = time.time() - (t_due - 0.05)
        sends = fakes.sends()
        times = sorted(at for _, at in sends)
        numbers = {num for num, _ in sends}
        expected = {loadgen.jid_for(c) for c in chats}
        missing = len(expected - numbers)
        duplicates = len(sends) - len(numbers)
        drain = (times[-1] - t_due) if len(numbers) >= n else float("nan")
        first = (times[0] - t_due) if times else float("nan")
        replies = len(sends)
        srv_cpu = cpu1 - cpu0
        cpu_per_reply = srv_cpu / max(replies, 1)
        machine = machine_window(sys0, sys1)
        wall = (times[-1] - times[0]) if len(times) > 1 else float("nan")
        rate = n / drain if drain == drain else float("nan")
        what = (
            f"Drain with history, knowledge and a text burst: {n:,} chats due in the same second, each a burst of "
            f"{len(BURST)} customer texts after {len(HISTORY_TURNS)} earlier turns (customer + reply) of history, "
            f"KNOWLEDGE_DIR=examples/knowledge -> {n:,} sendText"
        )
        if poll is not None:
            what += f" (diagnostic: WORKER_POLL_SECONDS={poll})"
        if apart:
            what += f"; web and workers apart: {server.label}"
        if redis.cluster:
            what += f"; Redis Cluster of 3 masters + 3 replicas, DUE_SHARDS={redis.shards}"
        plain = poll is None and not apart and not redis.cluster  # row 3 itself: the target and row 4
        report.add(
            key,
            what,
            f"{rate:,.0f} replies/s ({secs(drain)}; first send +{secs(first)}; {missing} missing, "
            f"{duplicates} duplicates)",
            f">= {DRAIN_TARGET_REPLIES_PER_SECOND:,.0f} replies/s" if plain else "info (beside 3)",
            (rate >= DRAIN_TARGET_REPLIES_PER_SECOND and missing == 0 and duplicates == 0) if plain else None,
        )
        if plain:
            report.add(
                "4",
                "CPU per reply (gunicorn master + workers, /proc utime+stime, during 3)",
                f"{cpu_per_reply * 1000:.2f} ms/reply ({srv_cpu:.2f} CPU-s / {replies:,} replies)",
                f"<= {CPU_PER_REPLY_TARGET * 1000:.1f} ms",
                cpu_per_reply <= CPU_PER_REPLY_TARGET and replies >= n,
            )
            report.notes.append(
                f"4: same window, redis-server {(rcpu1 - rcpu0) / max(replies, 1) * 1000:.2f} ms/reply, fake "
                f"Gemini+Evolution {(fcpu1 - fcpu0) / max(replies, 1) * 1000:.2f} ms/reply; server used "
                f"{srv_cpu / max(drain, 1e-9) * 100:.0f}% of one core during the drain (200% = both cores); "
                f"machine busy {machine['busy_pct']:.0f}% of 2 cores: irq/softirq {machine['irq_pct'] * 2:.0f}% of "
                f"one core, processes outside the bench "
                f"~{others_cores(machine, window, srv_cpu + rcpu1 - rcpu0 + fcpu1 - fcpu0):.0%} of one core, "
                f"steal {machine['steal_pct']:.1f}%."
            )
        report.notes.append(
            f"{key}: preload finished {headroom:.1f} s before the common deadline; first->last send {secs(wall)}; "
            f"server CPU {cpu_per_reply * 1000:.1f} ms/reply, {srv_cpu / max(drain, 1e-9) * 100:.0f}% of one core."
        )
        report.raw[f"{key}_drain"] = {
            "poll": poll,
            "drain": drain,
            "replies_per_s": rate,
            "headroom": headroom,
            "first": first,
            "replies": replies,
            "missing": missing,
            "duplicates": duplicates,
            "count": count,
            "server_cpu_s": srv_cpu,
            "cpu_per_reply_ms": cpu_per_reply * 1000,
            "redis_cpu_s": rcpu1 - rcpu0,
            "fakes_cpu_s": fcpu1 - fcpu0,
            "machine": machine,
        }
        log(f"[{key}] drain {secs(drain)}, {cpu_per_reply * 1000:.1f} ms CPU/reply, missing {missing}")
    finally:
        server.stop()


def bench_on_cluster(args: argparse.Namespace, fakes: FakeHost, report: Report) -> None:
    """Rows 1c and 3c: rows 1a and 3 again on a 3-master Redis Cluster with a replica each, in the same run."""
    cluster = ClusterProc(RESULTS_DIR / "cluster").start()
    log(f"redis cluster: masters on {cluster.group.masters()}, DUE_SHARDS={cluster.shards}")
    try:
        if "1c" in args.tests:
            bench_webhook(args, cluster, fakes, report, "sync")
        if "3c" in args.tests:
            bench_drain(args, cluster, fakes, report, poll=None, key="3c")
    finally:
        cluster.stop()


# ----- 5: Redis memory per buffered chat ------------------------------------------------------------------


def bench_memory(args: argparse.Namespace, redis: RedisProc, report: Report) -> None:
    n = args.mem_chats
    client = redis.client
    client.flushall()
    log(f"[5] Redis memory: buffering {n:,} chats of one message each")
    buffer = make_buffer(redis.url, 600.0)
    # Warm-up outside the measured window: loads the script and creates the shared ZSET with one member.
    preload(buffer, [9_000_000], [time.time() + 600], 600.0)
    time.sleep(0.5)
    before = int(client.info("memory")["used_memory"])
    chats = [1_000_000 + i for i in range(n)]
    preload(buffer, chats, [time.time() + 600] * n, 600.0)
    time.sleep(1.0)  # let incremental rehashing of the key space finish
    after = int(client.info("memory")["used_memory"])
    text_bytes = len(MESSAGE_TEXT.encode())
    per_chat = (after - before) / n
    beyond = per_chat - text_bytes
    sample = f"evolution:{loadgen.INSTANCE}:{loadgen.jid_for(chats[n // 2])}"
    parts = {
        "seen": client.memory_usage(f"{PREFIX}:seen:{sample}:3EB0{chats[n // 2]:016X}", samples=0) or 0,
        "pending": client.memory_usage(f"{PREFIX}:chat:{sample}:pending", samples=0) or 0,
        "meta": client.memory_usage(f"{PREFIX}:chat:{sample}:meta", samples=0) or 0,
        "due/member": (client.memory_usage(f"{PREFIX}:due", samples=0) or 0) / (n + 1),
    }
    report.add(
        "5",
        f"Redis memory per buffered chat, 1 message ({text_bytes} B text), incl. seen/dedupe marker + due ZSET",
        f"{beyond:,.0f} B beyond the text ({per_chat:,.0f} B total/chat, {n:,} chats)",
        f"<= {MEMORY_TARGET_BEYOND_TEXT:,} B beyond text",
        beyond <= MEMORY_TARGET_BEYOND_TEXT,
    )
    report.notes.append(
        "5: INFO used_memory delta / chats; includes the seen marker (STRING with TTL, so also an expires-dict "
        "entry), the pending LIST (the message JSON: id, text, kind, name, ts, at), the meta HASH if the code "
        "keeps one for a chat being typed (since 3a4f519 it does not: 0 B) and the chat's `due` ZSET member, plus "
        "key-space dict growth. MEMORY USAGE of one chat: "
        + ", ".join(f"{k} {v:,.0f} B" for k, v in parts.items())
        + " (MEMORY USAGE excludes dict/expires overhead)."
    )
    report.raw["5_memory"] = {"before": before, "after": after, "per_chat": per_chat, "beyond": beyond, **parts}
    log(f"[5] {per_chat:,.0f} B/chat, {beyond:,.0f} B beyond text")
    client.flushall()


def git_head(root: Path = ROOT) -> str:
    import subprocess

    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "*.py"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.split("\n")
        changed = [line[3:] for line in dirty if line.strip()]
        return head + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ----- main -----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="shrink every size (about 1.5 minutes)")
    p.add_argument("--only", default="H,1,2,3,3w,1c,3c,T,5,A,M", help="comma list of tests to run (4 comes with 3)")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--threads", type=int, default=4, help="threads per gthread worker (row 1b)")
    p.add_argument("--load-procs", type=int, default=2, help="load processes for max throughput")
    p.add_argument("--conns", type=int, default=16, help="total concurrent connections for max throughput")
    p.add_argument("--tp-seconds", type=float, help="measured seconds of the max-throughput run (default 8)")
    p.add_argument("--warmup", type=float, help="unmeasured seconds before it (default 2)")
    p.add_argument("--tp-chats", type=int, default=10_000, help="distinct chats the webhook load cycles over")
    p.add_argument("--paced-rate", type=float, default=500.0)
    p.add_argument("--paced-seconds", type=float, help="default 10")
    p.add_argument("--paced-threads", type=int, default=16, help="connections of the paced client")
    p.add_argument("--lag-chats", type=int, help="default 10,000")
    p.add_argument("--lag-spread", type=float, help="seconds the deadlines cover (default 60)")
    p.add_argument("--lag-timeout", type=float, default=60.0, help="wait after the last deadline")
    p.add_argument(
        "--lag-via-http",
        action="store_true",
        help="test 2 posts webhooks paced over the spread (DEBOUNCE_SECONDS=spread; takes 2x spread) "
        "instead of buffering through Buffer.append with exact deadlines",
    )
    p.add_argument("--drain-chats", type=int, help="default 2,000")
    p.add_argument("--drain-timeout", type=float, default=90.0)
    p.add_argument("--tenant-chats", type=int, help="rows T: chats drained per case (default 1,000)")
    p.add_argument("--tenant-rounds", type=int, help="rows T: rounds of each case, alternated (default 2)")
    p.add_argument(
        "--diag-poll",
        type=float,
        default=None,
        help="also run the drain with this WORKER_POLL_SECONDS as a diagnostic row (default 0.02; 0 = skip; "
        "--quick skips it unless given)",
    )
    p.add_argument("--mem-chats", type=int, help="default 10,000")
    p.add_argument("--gemini-delay", type=float, default=0.05)
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "latest.md")
    p.add_argument(
        "--no-snapshot",
        action="store_true",
        help="run the service straight from the working tree instead of a private copy taken at start",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before starting, wait up to SECONDS for the machine to be < 25%% busy (shared machines)",
    )
    p.add_argument(
        "--source",
        type=Path,
        metavar="CHECKOUT",
        help="measure another checkout's service code (e.g. a `git worktree` of the last release: the 'before' "
        "figures), with this tree's bench",
    )
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    p.add_argument(
        "--profile",
        action="store_true",
        help="run bench/profile_paths.py (call trees of the webhook and reply paths) instead of the rows",
    )
    p.add_argument("--profile-tag", default="after", help="with --profile: suffix of bench/profiles/<path>-<tag>.txt")
    args = p.parse_args(argv)
    quick = args.quick
    defaults = {
        "tp_seconds": (8.0, 3.0),
        "warmup": (2.0, 1.0),
        "paced_seconds": (10.0, 4.0),
        "lag_chats": (10_000, 2_000),
        "lag_spread": (60.0, 15.0),
        "drain_chats": (2_000, 500),
        "mem_chats": (10_000, 2_000),
        "tenant_chats": (1_000, 300),
        "tenant_rounds": (2, 1),
    }
    for name, (full, small) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    if args.diag_poll is None:
        args.diag_poll = 0.0 if quick else 0.02
    args.tests = {t.strip() for t in args.only.split(",") if t.strip()}
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.profile:
        import profile_paths

        return profile_paths.main(["--tag", args.profile_tag])
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "logs").mkdir(exist_ok=True)
    started = time.time()
    busy_before = machine_busy(2.0)
    quiet_until = started + args.wait_quiet
    while busy_before >= 25.0 and time.time() < quiet_until:
        log(f"machine {busy_before:.0f}% busy before start; waiting for it to quieten (--wait-quiet)")
        busy_before = machine_busy(5.0)
    load_before = os.getloadavg()
    report = Report()
    if args.source:
        digest = harness.snapshot_source(RESULTS_DIR / "src", root=args.source.resolve())
        source = f"snapshot of {args.source} at start, sha256 {digest}, its git HEAD {git_head(args.source)}; bench"
    elif args.no_snapshot:
        harness.use_source(ROOT)
        source = "working tree (live)"
    else:
        digest = harness.snapshot_source(RESULTS_DIR / "src")
        source = f"snapshot of the working tree at start, sha256 {digest}"
    source += f", git HEAD {git_head()}"
    redis = RedisProc(RESULTS_DIR / "redis").start()
    fakes = FakeHost(args.gemini_delay)
    log(f"redis-server pid {redis.pid} on :{redis.port}; fakes at {fakes.gemini_url} / {fakes.evolution_url}")
    try:
        if "H" in args.tests:
            import hotpath_bench

            hotpath_bench.bench_hotpath(args, redis, fakes, report)
        if "1" in args.tests:
            bench_webhook(args, redis, fakes, report, "sync")
            bench_webhook(args, redis, fakes, report, "gthread")
        if "2" in args.tests:
            bench_lag(args, redis, fakes, report)
        if "3" in args.tests or "4" in args.tests:
            bench_drain(args, redis, fakes, report, poll=None, key="3")
            if args.diag_poll > 0:
                bench_drain(args, redis, fakes, report, poll=args.diag_poll, key="3d")
        if "3w" in args.tests:
            bench_drain(args, redis, fakes, report, poll=None, key="3w", apart=True)
        if {"1c", "3c"} & args.tests:
            bench_on_cluster(args, fakes, report)
        if "T" in args.tests:
            import tenants_bench

            tenants_bench.bench_tenants(args, redis, fakes, report)
        if "5" in args.tests:
            bench_memory(args, redis, report)
        if "A" in args.tests:
            import archive_bench

            archive_bench.bench_archive(args, redis, fakes, report)
        if "M" in args.tests:
            import metrics_bench

            metrics_bench.bench_metrics(args, redis, fakes, report)
    finally:
        fakes.stop()
        redis.stop()
    for server in report.servers:
        tracebacks = server.logs().count("Traceback")
        if tracebacks:
            report.notes.append(
                f"WARNING: {tracebacks} tracebacks in bench/results/logs/{server.log_path.name}: the numbers of that "
                "test are suspect"
            )
    elapsed = time.time() - started
    command = " ".join([".venv/bin/python", "bench/run.py", *sys.argv[1:]])
    header = (
        f"## Benchmark results ({time.strftime('%Y-%m-%d %H:%M')}, {'quick' if args.quick else 'full'} run, "
        f"{elapsed:.0f} s)\n\n"
        f"Machine: {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}; "
        f"before start: load average {load_before[0]:.2f}, machine {busy_before:.0f}% busy (other tenants). "
        f"Service: gunicorn `webhook:app` -w {args.workers} "
        f"(sync unless noted), own redis-server, fake Gemini {args.gemini_delay * 1000:.0f} ms, fake Evolution, "
        f"load from separate processes. Code: {source}. Command: `{command}`"
    )
    text = report.markdown(header)
    print()
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    (args.out.with_suffix(".json")).write_text(json.dumps(report.raw, indent=2, default=str), encoding="utf-8")
    log(f"written {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    failed = any(r.verdict == "FAIL" for r in report.rows)
    return 1 if failed and args.strict else 0


def run_alone(only: str, out_name: str, argv: list[str] | None = None) -> int:
    """A row's module run as a script: `main()` with `--only <row>`, writing bench/results/<out_name> unless told."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--out" not in argv:
        argv += ["--out", str(RESULTS_DIR / out_name)]
    return main(["--only", only, *argv])


if __name__ == "__main__":
    sys.exit(main())
