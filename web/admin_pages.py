"""The owner's panel at /admin (pt-BR pages, behind the login in web/console_auth.py): the chats with their state and
pending burst (live), a chat's history with its actions (pause, resume, close, reply as a person), the deliveries
that failed (retry, discard), the knowledge base (files, problems, reload, a test question) and the status (what
/health says, and each gateway's own connection state, asked on demand)."""

from __future__ import annotations

import os
import time
from typing import Any
from urllib.parse import quote

import requests
from flask import Blueprint, Response, flash, redirect, render_template, request, url_for
from werkzeug.exceptions import NotFound

from chat_list import customer_name, summaries
from conversation import CLOSE, PAUSE, RESUME
from gateways.evolution import evolution_server_url
from models import ChatRef
from owner_actions import dead_letter_view, discard_dead_letter, retry_dead_letter, send_as_person, steer
from web import components
from web.chats_api import MAX_PERSON_MESSAGE_CHARS, chat_from_path, view
from web.console_auth import login_page, require_login, safe_next, try_login
from web.health import health_body

admin_pages = Blueprint("admin_pages", __name__, url_prefix="/admin")
admin_pages.before_request(require_login)

STATES = {"open": "aberta", "paused": "bot pausado", "closed": "encerrada", "opted_out": "descadastrado"}
GATEWAY_CHECK_TIMEOUT_SECONDS = 3.0


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
    rows = summaries(components(), state=state, gateway=gateway, search=search)
    return {"rows": rows, "state": state, "gateway": gateway, "q": search, "now": time.time()}


def chat_or_404(raw: str) -> ChatRef:
    chat = chat_from_path(raw)
    if chat is None:
        raise NotFound("no such chat")
    return chat


@admin_pages.get("/chats/<path:raw>")
def chat_page(raw: str) -> str:
    chat = chat_or_404(raw)
    return render_template("admin/chat.html", chat=chat, quoted=quote(chat.key, safe=""), **chat_view(chat))


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


@admin_pages.get("/deliveries")
def deliveries() -> str:
    letters = [dead_letter_view(record) for record in components().buffer.dead_letters()]
    return render_template("admin/deliveries.html", letters=letters)


@admin_pages.post("/deliveries/<letter_id>")
def delivery_action(letter_id: str) -> Response:
    parts = components()
    if request.form.get("action") == "discard":
        flash("Descartada." if discard_dead_letter(parts, letter_id) else "Essa entrega já não existe.")
    else:
        outcome = retry_dead_letter(parts, letter_id)
        if outcome is None:
            flash("Essa entrega já não existe.")
        else:
            flash("Resposta entregue." if outcome.ok else f"Falhou de novo: {outcome.detail}")
    return redirect(url_for("admin_pages.deliveries"))


@admin_pages.route("/knowledge", methods=["GET", "POST"])
def knowledge() -> str:
    parts = components()
    if request.method == "POST":
        parts.watcher.reload_everywhere()
        flash("Base de conhecimento recarregada.")
    question = request.args.get("q", "")[: parts.settings.max_message_chars]
    hits = parts.knowledge.search(question) if question.strip() and parts.knowledge.configured else []
    summary = parts.knowledge.summary(0)
    return render_template("admin/knowledge.html", summary=summary, question=question, hits=hits, pid=os.getpid())


@admin_pages.get("/status")
def status() -> str:
    checks = gateway_states() if request.args.get("check") else {}
    return render_template("admin/status.html", health=health_body(), checks=checks)


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
