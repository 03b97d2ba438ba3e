"""The owner's panel at /admin (pt-BR pages, behind the login in web/console_auth.py): the chats with their state and
pending burst (live), a chat's history with its actions (pause, resume, close, reply as a person) and its whole
archived history page by page, a search of the archive, a contact's LGPD export and erasure, the deliveries that
failed (retry, discard), the knowledge base (files, problems, reload, a test question) and the status (what /health
says, and each gateway's own connection state, asked on demand). Nothing here logs a message's text or a number."""

from __future__ import annotations

import os
import time
from datetime import datetime
from typing import Any
from urllib.parse import quote

import requests
from flask import Blueprint, Response, flash, redirect, render_template, request, url_for
from werkzeug.exceptions import NotFound

from archive.events import DEAD_LETTER
from archive.store import PAGE_LIMIT, SEARCH_LIMIT
from archive.store import UNAVAILABLE as DATABASE_UNAVAILABLE
from chat_list import customer_name, summaries
from conversation import CLOSE, PAUSE, RESUME
from gateways.evolution import evolution_server_url
from hours import parse_timezone
from models import ChatRef
from owner_actions import dead_letter_view, discard_dead_letter, retry_dead_letter, send_as_person, steer
from privacy import ArchiveUnavailable, Erased, erase, export
from usage import UsageLedger
from web import components
from web.admin_auth import EVERY_TENANT, in_scope, scope
from web.archive_api import MAX_QUERY_CHARS, event_view, export_download
from web.chats_api import MAX_PERSON_MESSAGE_CHARS, chat_from_path, not_visible, view, visible_letters
from web.console_auth import deployment_page_refused, login_page, require_login, safe_next, try_login
from web.health import health_body
from web.knowledge_admin import knowledge_in_scope

admin_pages = Blueprint("admin_pages", __name__, url_prefix="/admin")
admin_pages.before_request(require_login)

STATES = {"open": "aberta", "paused": "bot pausado", "closed": "encerrada", "opted_out": "descadastrado"}
GATEWAY_CHECK_TIMEOUT_SECONDS = 3.0
UNKNOWN_TENANT_TEXT = "Não há empresa com esse identificador no TENANTS_FILE."


@admin_pages.route("/login", methods=["GET", "POST"])
def login() -> Any:
    if request.method == "GET":
        return login_page()
    if try_login(request):
        return redirect(safe_next(request.args.get("next")))
    return login_page("Token incorreto.", 401)


@admin_pages.post("/logout")
def logout() -> Response:
    from flask import session

    session.clear()
    return redirect(url_for("admin_pages.login"))


@admin_pages.get("/")
def chats() -> str:
    return render_template("admin/chats.html", **chat_filters(), states=STATES, gateways=sorted(components().gateways))


@admin_pages.get("/chats/rows")
def chat_rows() -> str:
    """The list's rows alone, polled by the page to stay live."""
    return render_template("admin/_chat_rows.html", **chat_filters(), states=STATES)


def chat_filters() -> dict[str, Any]:
    state, gateway, search = (request.args.get(name, "") for name in ("state", "gateway", "q"))
    rows = summaries(components(), state=state, gateway=gateway, search=search, visible=in_scope)
    return {"rows": rows, "state": state, "gateway": gateway, "q": search, "now": time.time()}


def chat_or_404(raw: str) -> ChatRef:
    chat = chat_from_path(raw)
    if chat is None:
        raise NotFound("no such chat")
    return chat


@admin_pages.get("/chats/<path:raw>")
def chat_page(raw: str) -> str:
    """The chat as Redis holds it (live), its actions, and a page of its archived history (?before=<event id>)."""
    chat = chat_or_404(raw)
    archived = archive_page(chat, request.args.get("before", type=int))
    return render_template(
        "admin/chat.html", chat=chat, quoted=quote(chat.key, safe=""), archived=archived, **chat_view(chat)
    )


@admin_pages.get("/chats/<path:raw>/body")
def chat_body(raw: str) -> str:
    """The history and pending burst alone, polled by the chat page."""
    chat = chat_or_404(raw)
    return render_template("admin/_chat_body.html", chat=chat, **chat_view(chat))


def chat_view(chat: ChatRef) -> dict[str, Any]:
    now = round(time.time(), 3)
    name = customer_name(components().history.recent(chat))
    return {"view": view(chat, now), "now": now, "states": STATES, "name": name}


@admin_pages.post("/chats/<path:raw>/action")
def chat_action(raw: str) -> Response:
    chat = chat_or_404(raw)
    parts, action = components(), request.form.get("action", "")
    now = round(time.time(), 3)
    if action == "pause":
        minutes = request.form.get("minutes", "").strip()
        seconds = float(minutes) * 60 if minutes.replace(".", "", 1).isdigit() and float(minutes) > 0 else float("inf")
        steer(parts, chat, PAUSE, seconds=seconds, now=now)
        flash("Bot pausado nesta conversa.")
    elif action in ("resume", "close"):
        steer(parts, chat, {"resume": RESUME, "close": CLOSE}[action], now=now)
        flash("Bot retomado." if action == "resume" else "Conversa encerrada.")
    elif action == "reply":
        text = request.form.get("text", "").strip()[:MAX_PERSON_MESSAGE_CHARS]
        outcome = send_as_person(parts, chat, text, now=now) if text else None
        if outcome is None:
            flash("Escreva uma mensagem.")
        elif outcome.ok:
            flash("Mensagem enviada; o bot ficou pausado nesta conversa.")
        else:
            flash(f"Não foi possível enviar: {outcome.detail}")
    return redirect(url_for("admin_pages.chat_page", raw=chat.key))


# ----- the archive: search, a chat's whole history, the contact's LGPD export and erasure -------------------

AUTHORS = {"customer": "Cliente", "bot": "Assistente", "human": "Atendente"}
MEDIA_KINDS = {
    "image": "imagem",
    "audio": "áudio",
    "voice": "mensagem de voz",
    "video": "vídeo",
    "document": "documento",
    "sticker": "figurinha",
    "location": "localização",
    "contact": "contato",
}
NOTES = {
    "handoff_request": "O cliente pediu para falar com uma pessoa.",
    "opt_out": "O cliente pediu para não receber mais mensagens.",
    "opt_in": "O cliente voltou a aceitar mensagens.",
    "out_of_hours": "Mensagem fora do horário de atendimento: o assistente avisou o horário.",
}
LIFECYCLE_NOTES = {"pause": "Bot pausado", "resume": "Bot retomado", "close": "Conversa encerrada"}
NOTE_BY = {"panel": "pelo painel", "phone": "pelo celular"}
# What an erasure deleted, by place (privacy.Erased): (singular, plural) in the order the flash lists them.
ERASED_LABELS = {
    "archive_rows": ("evento do arquivo", "eventos do arquivo"),
    "stream_entries": ("evento a caminho do arquivo", "eventos a caminho do arquivo"),
    "redis_keys": ("registro no Redis", "registros no Redis"),
    "dead_letters": ("entrega com falha", "entregas com falha"),
    "queues": ("entrada nas filas de resposta", "entradas nas filas de resposta"),
    "in_memory": ("registro na memória do processo", "registros na memória do processo"),
}


@admin_pages.context_processor
def archive_helpers() -> dict[str, Any]:
    return {
        "local_time": local_time,
        "event_note": event_note,
        "authors": AUTHORS,
        "media_kinds": MEDIA_KINDS,
        "usage_words": usage_words,
        "deployment_admin": scope() == EVERY_TENANT,
    }


def local_time(at: float) -> str:
    """A unix time as the business reads it (25/12/2026 14:05 in TIMEZONE): the pages' script then writes the
    browser's local time over it, as everywhere in the panel."""
    return datetime.fromtimestamp(at, parse_timezone(components().settings.timezone)).strftime("%d/%m/%Y %H:%M")


def usage_words(usage: dict[str, Any]) -> str:
    """Tokens and cost in pt-BR: "1.234 tokens de entrada, 56 de saída · US$ 0,0012" (plus the models, for an
    archived reply)."""
    models = ", ".join(
        dict.fromkeys(f"{call.get('provider')} {call.get('model')}" for call in usage.get("calls") or [])
    )
    tokens = (
        f"{_thousands(int(usage.get('input_tokens') or 0))} tokens de entrada, "
        f"{_thousands(int(usage.get('output_tokens') or 0))} de saída"
    )
    cost = f"US$ {float(usage.get('cost_usd') or 0):.4f}".replace(".", ",")
    return " · ".join(filter(None, [models, tokens, cost]))


def _thousands(n: int) -> str:
    return f"{n:,}".replace(",", ".")


def event_note(event: dict[str, Any]) -> str:
    """What an archived event that is not a message says, as a short note in pt-BR."""
    kind, data = event["kind"], event["data"] or {}
    if kind == DEAD_LETTER:
        attempts = int(data.get("attempts") or 0)
        tries = f" após {attempts} tentativa{'s' if attempts != 1 else ''}" if attempts else ""
        return f"Resposta não entregue{tries} ({data.get('error') or 'erro desconhecido'})."
    by = NOTE_BY.get(str(data.get("by") or ""))
    if kind in LIFECYCLE_NOTES:
        return f"{LIFECYCLE_NOTES[kind]} {by}." if by else f"{LIFECYCLE_NOTES[kind]}."
    return NOTES.get(kind, kind)


def search_result(row: dict[str, Any]) -> dict[str, Any]:
    result = event_view(row)
    chat = ChatRef.from_key(row["chat"])
    return {**result, "ref": chat, "number": chat.chat_id.split("@")[0], "name": (row["data"] or {}).get("name", "")}


@admin_pages.get("/search")
def archive_search() -> str:
    """?q=words: the archive's messages that match (Portuguese full-text, accents ignored), newest first."""
    query = request.args.get("q", "").strip()[:MAX_QUERY_CHARS]
    store = components().archive.store
    state, results = ("off" if store is None else "up"), []
    if store is not None and query:
        try:
            found = store.search(query, tenant=scope() or None, limit=SEARCH_LIMIT)  # a tenant finds its own
            results = [search_result(row) for row in found]
        except DATABASE_UNAVAILABLE:
            state = "down"
    names: dict[str, str] = {}
    for result in results:  # a bot's line carries no name: show the one a customer's line of the chat gave
        if result["name"]:
            names.setdefault(result["chat"], result["name"])
    return render_template(
        "admin/search.html", q=query, results=results, names=names, archive=state, limit=SEARCH_LIMIT
    )


def archive_page(chat: ChatRef, before: int | None) -> dict[str, Any]:
    """A page of the chat's archived events, oldest first, with the id to ask for the page before it (or None)."""
    store = components().archive.store
    page: dict[str, Any] = {"state": "off", "events": [], "older": None, "before": before}
    if store is None:
        return page
    try:
        rows = store.history(chat.key, before=before, limit=PAGE_LIMIT + 1)
    except DATABASE_UNAVAILABLE:
        return {**page, "state": "down"}
    shown = rows[:PAGE_LIMIT]
    older = shown[-1]["id"] if len(rows) > PAGE_LIMIT else None
    return {**page, "state": "up", "events": [event_view(row) for row in reversed(shown)], "older": older}


@admin_pages.get("/chats/<path:raw>/export")
def contact_export(raw: str) -> Response:
    """Everything held about the contact (privacy.export), as a JSON download; while PostgreSQL is away, back to the
    chat page with a note (so the link carries no `download` attribute: it would save that page as the file)."""
    chat = chat_or_404(raw)
    try:
        body = export(components(), chat)
    except ArchiveUnavailable:
        flash("O arquivo está indisponível agora (o PostgreSQL não responde): tente exportar de novo em instantes.")
        return redirect(url_for("admin_pages.chat_page", raw=chat.key))
    response = export_download(body, chat)
    response.headers["Cache-Control"] = "no-store"
    return response


@admin_pages.route("/chats/<path:raw>/erase", methods=["GET", "POST"])
def contact_erase(raw: str) -> Any:
    """GET: what will be erased, and the form that confirms it; POST: erase the contact everywhere (privacy.erase)."""
    chat = chat_or_404(raw)
    parts = components()
    if request.method == "GET":
        name = customer_name(parts.history.recent(chat))
        return render_template("admin/erase.html", chat=chat, name=name, archive_on=parts.archive.enabled)
    try:
        erased = erase(parts, chat)
    except ArchiveUnavailable:
        flash("O arquivo está indisponível agora (o PostgreSQL não responde): nada foi apagado. Tente de novo.")
        return redirect(url_for("admin_pages.chat_page", raw=chat.key))
    flash(erased_message(erased, archive_on=parts.archive.enabled))
    return redirect(url_for("admin_pages.chats"))


def erased_message(erased: Erased, *, archive_on: bool) -> str:
    counts = erased.to_json()
    found = [f"{counts[name]} {labels[counts[name] != 1]}" for name, labels in ERASED_LABELS.items() if counts[name]]
    off = " (o arquivo está desligado)" if not archive_on else ""
    if not found:
        return f"Não havia dados deste contato para apagar{off}."
    return f"Dados do contato apagados: {', '.join(found)}{off}."


@admin_pages.get("/deliveries")
def deliveries() -> str:
    letters = [dead_letter_view(record) for record in visible_letters()]
    return render_template("admin/deliveries.html", letters=letters)


@admin_pages.post("/deliveries/<letter_id>")
def delivery_action(letter_id: str) -> Response:
    parts = components()
    if not_visible(letter_id):
        flash("Essa entrega já não existe.")
    elif request.form.get("action") == "discard":
        flash("Descartada." if discard_dead_letter(parts, letter_id) else "Essa entrega já não existe.")
    else:
        outcome = retry_dead_letter(parts, letter_id)
        if outcome is None:
            flash("Essa entrega já não existe.")
        else:
            flash("Resposta entregue." if outcome.ok else f"Falhou de novo: {outcome.detail}")
    return redirect(url_for("admin_pages.deliveries"))


@admin_pages.route("/knowledge", methods=["GET", "POST"])
def knowledge() -> Any:
    """The knowledge the replies use: a tenant's session sees its tenant's; the deployment's admin sees the
    environment's, or a tenant's chosen with ?tenant=<id>, and may reload everything (POST)."""
    parts = components()
    deployment = scope() == EVERY_TENANT
    if request.method == "POST":
        if not deployment:
            return deployment_page_refused()
        parts.watcher.reload_everywhere()
        flash("Base de conhecimento recarregada.")
    chosen = knowledge_in_scope(request.args.get("tenant", ""))
    if chosen is None:
        page = render_template("admin/refused.html", heading="Empresa não encontrada", text=UNKNOWN_TENANT_TEXT)
        return page, 404
    tenant, base = chosen
    question = request.args.get("q", "")[: parts.settings.max_message_chars]
    summary = base.summary(0)
    hits = base.search(question) if question.strip() and base.configured else []
    names = {t.id: t.name for t in parts.tenants.all()} if parts.tenants.multi else {}
    return render_template(
        "admin/knowledge.html",
        summary=summary,
        question=question,
        hits=hits,
        pid=os.getpid(),
        tenant=tenant,
        tenant_name=names.get(tenant, tenant),
        tenants=[{"id": id_, "name": name} for id_, name in names.items()] if deployment else [],
        auto_reload=parts.settings.rag_auto_reload,
    )


@admin_pages.get("/status")
def status() -> str:
    checks = gateway_states() if request.args.get("check") else {}
    today = components().usage.of_day(UsageLedger.day(time.time()))
    return render_template("admin/status.html", health=health_body(), checks=checks, today=today)


def gateway_states() -> dict[str, str]:
    """Each gateway's own word on its connection, where it has one (asked now, with a short timeout)."""
    settings, states = components().settings, {}
    if settings.evolution_api:
        instances = {c.instance for c in summaries(components(), gateway="evolution")[:20]} or {"default"}
        for instance in sorted(instances):
            url = f"{evolution_server_url(settings.evolution_api)}/instance/connectionState/{quote(instance, safe='')}"
            states[f"evolution {instance}"] = ask(url, {"apikey": settings.authentication_api_key})
    if settings.mega_enabled:
        url = f"{settings.mega_api_base_url.rstrip('/')}/rest/instance/{quote(settings.mega_instance_id, safe='')}"
        states["mega"] = ask(url, {"Authorization": f"Bearer {settings.mega_api_token}"})
    return states


def ask(url: str, headers: dict[str, str]) -> str:
    try:
        response = requests.get(url, headers=headers, timeout=GATEWAY_CHECK_TIMEOUT_SECONDS)
    except requests.RequestException as exc:
        return f"sem resposta ({exc.__class__.__name__})"
    if response.status_code >= 400:
        return f"respondeu {response.status_code}"
    try:
        body = response.json()
    except ValueError:
        return "respondeu, sem JSON"
    instance = body.get("instance") if isinstance(body, dict) else None
    state = (instance or {}).get("state") if isinstance(instance, dict) else None
    return str(state or body.get("state") or body.get("status") or "respondeu") if isinstance(body, dict) else "ok"
