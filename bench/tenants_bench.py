"""Rows T1-T3 of bench/run.py: several businesses in one deployment (TENANTS_FILE), against one business.

Both cases run the same `gunicorn -w 4` on the same 50 Evolution instances, each with a 200-chunk knowledge folder
(retrieval mode): "one tenant" is a TENANTS_FILE whose single tenant claims all 50 instances with one of those
folders; "50 tenants" gives each instance its own tenant, persona and folder. Measured in one run, the two cases
alternated (one, fifty, one, fifty), the median of each kept:

  T1  memory per worker process after a drain that used every tenant: the resident set of the 50-tenant workers
      minus the one-tenant workers', and what the knowledge cache says it holds, against KNOWLEDGE_CACHE_MB
  T2  webhook max throughput (closed loop, messages spread over the 50 instances), 50 tenants / one tenant
  T3  drain of --tenant-chats chats due at once spread over the 50 instances, 50 tenants / one tenant
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import loadgen
from harness import FakeHost, Gunicorn, RedisProc

TENANTS = 50
CHUNKS = 200
BUDGET_MB = 64  # the 50 indexes fit (about 0.4 MB each): T3 measures building them once, not an undersized cache
WORDS = (
    "entrega retirada pagamento pix cartão boleto parcelamento garantia troca devolução estoque tamanho cor modelo "
    "prazo frete cupom desconto promoção horário feriado endereço estacionamento agendamento orçamento encomenda "
    "sabor recheio cobertura embalagem presente kit combo assinatura plano mensal anual cadastro nota fiscal"
).split()


def knowledge_folder(root: Path, tenant: int) -> Path:
    """A 200-chunk folder: one short section per product, each with its own words and price."""
    folder = root / f"t{tenant:02d}"
    folder.mkdir(parents=True, exist_ok=True)
    sections = []
    for n in range(CHUNKS):
        words = " ".join(WORDS[(n * 7 + k + tenant) % len(WORDS)] for k in range(18))
        sections.append(
            f"## Produto {n} da loja {tenant}\n\nO produto {n} (código T{tenant}P{n}) custa R$ {10 + n},{tenant:02d}. "
            f"Detalhes: {words}; disponível em {n % 9 + 1} cores, prazo de {n % 5 + 1} dias úteis."
        )
    (folder / "produtos.md").write_text("\n\n".join(sections), encoding="utf-8")
    return folder


def instance(n: int) -> str:
    return loadgen.instance_for(n, TENANTS)


def tenant_of(n: int, *, many: bool) -> str:
    """The id of the tenant that claims instance(n) in the tenants file of the case: the chats this bench buffers
    itself carry it, as the webhook's do (their keys name their tenant)."""
    return f"t{n % TENANTS:02d}" if many else "unica"


def tenants_file(root: Path, folders: list[Path], *, many: bool) -> Path:
    if many:
        tables = [
            f'[tenants.{tenant_of(n, many=True)}]\nevolution_instances = ["{instance(n)}"]\n'
            f'SYSTEM_PROMPT = "Você atende a loja {n} do bench."\nKNOWLEDGE_DIR = "{folders[n]}"\n'
            for n in range(TENANTS)
        ]
    else:
        claimed = ", ".join(f'"{instance(n)}"' for n in range(TENANTS))
        tables = [
            f"[tenants.{tenant_of(0, many=False)}]\nevolution_instances = [{claimed}]\n"
            f'SYSTEM_PROMPT = "Você atende a loja do bench."\nKNOWLEDGE_DIR = "{folders[0]}"\n'
        ]
    path = root / ("fifty.toml" if many else "one.toml")
    path.write_text("\n".join(tables), encoding="utf-8")
    return path


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def bench_tenants(args: argparse.Namespace, redis: RedisProc, fakes: FakeHost, report: Any) -> None:
    import run  # the bench's shared helpers (imported here: run imports this module lazily too)

    root = run.RESULTS_DIR / "tenants"
    folders = [knowledge_folder(root / "knowledge", n) for n in range(TENANTS)]
    files = {"one": tenants_file(root, folders, many=False), "fifty": tenants_file(root, folders, many=True)}
    results: dict[str, list[dict[str, Any]]] = {"one": [], "fifty": []}
    for rep in range(args.tenant_rounds):
        for case in ("one", "fifty"):
            run.log(f"[T] round {rep + 1}/{args.tenant_rounds}: {case} tenant(s)")
            results[case].append(one_case(args, redis, fakes, report, files[case], case))

    def median(case: str, key: str) -> float:
        return statistics.median(r[key] for r in results[case])

    one_rss, fifty_rss = median("one", "rss_mb"), median("fifty", "rss_mb")
    cache_mb = max(r["cache_mb"] for r in results["fifty"])
    extra = fifty_rss - one_rss
    report.add(
        "T1",
        f"Memory per worker process after a drain that used all {TENANTS} tenants ({CHUNKS}-chunk knowledge each, "
        f"KNOWLEDGE_CACHE_MB={BUDGET_MB}), beside one tenant",
        f"{fifty_rss:.1f} MB vs {one_rss:.1f} MB RSS (+{extra:.1f} MB); knowledge cache at most {cache_mb:.1f} MB, "
        f"{max(r['evictions'] for r in results['fifty'])} unloads",
        f"cache <= {BUDGET_MB} MB",
        cache_mb <= BUDGET_MB,
    )
    tp = median("fifty", "rate") / median("one", "rate")
    report.add(
        "T2",
        f"Webhook max throughput, {TENANTS} tenants / one tenant (`sync -w {args.workers}`, same instances)",
        f"{tp:.2f}x ({median('fifty', 'rate'):,.0f} / {median('one', 'rate'):,.0f} req/s)",
        ">= 0.90x",
        tp >= 0.90,
    )
    drain = median("fifty", "drain_rate") / median("one", "drain_rate")
    cold = median("fifty", "cold_drain_rate") / median("one", "cold_drain_rate")
    missing = sum(r["missing"] + r["duplicates"] for case in results.values() for r in case)
    report.add(
        "T3",
        f"Drain of {args.tenant_chats:,} chats due at once over {TENANTS} instances, {TENANTS} tenants / one tenant, "
        "in a running deployment (after a first drain of as many chats)",
        f"{drain:.2f}x ({median('fifty', 'drain_rate'):,.0f} / {median('one', 'drain_rate'):,.0f} replies/s; "
        f"{missing} missing or duplicated)",
        ">= 0.90x",
        drain >= 0.90 and missing == 0,
    )
    report.add(
        "T3c",
        "The first drain after the start, which builds each tenant's setup in each process (info)",
        f"{cold:.2f}x ({median('fifty', 'cold_drain_rate'):,.0f} / {median('one', 'cold_drain_rate'):,.0f} replies/s)",
        "info",
        None,
    )
    report.notes.append(
        "T: rounds "
        + "; ".join(
            f"{case} {r['rate']:,.0f} req/s, first drain {r['cold_drain_rate']:,.0f} and then "
            f"{r['drain_rate']:,.0f} replies/s, {r['rss_mb']:.1f} MB"
            for case in ("one", "fifty")
            for r in results[case]
        )
        + "."
    )
    report.raw["tenants"] = results


def one_case(
    args: argparse.Namespace, redis: RedisProc, fakes: FakeHost, report: Any, path: Path, case: str
) -> dict[str, Any]:
    import run

    redis.client.flushall()
    fakes.reset()
    env = run.base_env(
        redis.url,
        fakes,
        DEBOUNCE_SECONDS=600,  # the throughput phase's messages never fall due (as in row 1a)
        TENANTS_FILE=str(path),
        KNOWLEDGE_CACHE_MB=BUDGET_MB,
        RAG_WHOLE_MAX_CHARS=0,
    )
    server = Gunicorn(env, workers=args.workers, log_path=run.RESULTS_DIR / "logs" / f"gunicorn-tenants-{case}.log")
    report.servers.append(server)
    server.start().wait_ready()
    try:
        rate = throughput(args, run, server)
        # The first drain builds each tenant's setup (persona, knowledge index, model client) in each process, as
        # the first replies after a start do; the second is a running deployment's. Both are reported.
        many = case == "fifty"
        cold_rate, cold_missing, cold_duplicates = drain(args, redis, fakes, run, first_chat=600_000, many=many)
        drain_rate, missing, duplicates = drain(args, redis, fakes, run, first_chat=700_000, many=many)
        missing += cold_missing
        duplicates += cold_duplicates
        time.sleep(0.5)
        workers = [pid for pid in server.pids()[1:]]
        rss = statistics.median(rss_kb(pid) for pid in workers) / 1024
        cache = [health_knowledge(server) for _ in range(12)]
        return {
            "rate": rate,
            "cold_drain_rate": cold_rate,
            "drain_rate": drain_rate,
            "missing": missing,
            "duplicates": duplicates,
            "rss_mb": rss,
            "cache_mb": max((c.get("bytes", 0) for c in cache), default=0) / 1024 / 1024,
            "evictions": max((c.get("evictions", 0) for c in cache), default=0),
        }
    finally:
        server.stop()


def health_knowledge(server: Gunicorn) -> dict[str, Any]:
    import requests

    body = requests.get(server.url + "/health", timeout=5).json()
    return dict((body.get("tenants") or {}).get("knowledge") or {})


def throughput(args: argparse.Namespace, run: Any, server: Gunicorn) -> float:
    kwargs = run.closed_loop_load(args, server.port, instances=TENANTS)
    procs, queue = run.run_load(loadgen.closed_loop, kwargs)
    results = run.collect(procs, queue, timeout=args.tp_seconds + args.warmup + 60)
    return sum(r["ok"] for r in results) / args.tp_seconds


def drain(
    args: argparse.Namespace, redis: RedisProc, fakes: FakeHost, run: Any, *, first_chat: int, many: bool
) -> tuple[float, int, int]:
    from models import ChatRef, IncomingMessage

    redis.client.flushall()
    fakes.reset()
    n = args.tenant_chats
    buffer = run.make_buffer(redis.url, 5.0)
    chats = [first_chat + i for i in range(n)]
    t_due = time.time() + 1.5 + n * 0.0007
    for chat in chats:
        ref = ChatRef(
            gateway="evolution",
            instance=instance(chat % TENANTS),
            chat_id=loadgen.jid_for(chat),
            tenant=tenant_of(chat, many=many),
        )
        message = IncomingMessage(chat=ref, message_id=f"3EB0{chat:016X}", text=run.MESSAGE_TEXT, push_name="Bench")
        buffer.append(message, now=t_due - 5.0)
    run.sleep_until(t_due)
    expected = {loadgen.jid_for(c) for c in chats}
    until = t_due + args.drain_timeout
    while time.time() < until and not expected <= {number for number, _ in fakes.sends()}:
        time.sleep(0.05)
    time.sleep(1.0)  # a duplicate would come just after
    sends = [(number, at) for number, at in fakes.sends() if number in expected]
    times = sorted(at for _, at in sends)
    numbers = {number for number, _ in sends}
    missing = len(expected - numbers)
    took = (times[-1] - t_due) if times and not missing else float("nan")
    return n / took, missing, len(sends) - len(numbers)
