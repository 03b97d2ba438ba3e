"""The console's login: ADMIN_TOKEN typed into a form opens a signed session cookie (HttpOnly, SameSite=Lax, Secure
when the request came over HTTPS); failed logins wait a second each and are counted. The pages' forms carry CSRF
tokens (Flask-WTF's CSRFProtect, set up by create_app); the JSON API keeps its bearer token instead."""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from urllib.parse import urlsplit

from flask import Request, Response, redirect, render_template, request, session, url_for
from werkzeug.exceptions import NotFound

from web import components
from web.console import check_form_token

log = logging.getLogger(__name__)

FAILED_LOGIN_DELAY_SECONDS = 1.0


def _token_mark(token: str) -> str:
    """What the session remembers of the token it was opened with: changing ADMIN_TOKEN logs everyone out."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def logged_in() -> bool:
    token = components().settings.admin_token
    return bool(token) and session.get("admin") == _token_mark(token)


def require_login() -> Response | None:
    """A blueprint's before_request: 404 while ADMIN_TOKEN is unset, the login page without a session, and then
    (the login form included) a 400 for a form posted without its CSRF token."""
    if not components().settings.admin_token:
        raise NotFound("the admin side is off: set ADMIN_TOKEN")
    if request.endpoint not in ("admin_pages.login", "admin_pages.logout") and not logged_in():
        return redirect(url_for("admin_pages.login", next=request.full_path.rstrip("?")))
    check_form_token()
    return None


def try_login(request_: Request) -> bool:
    """Open the session when the form's token is ADMIN_TOKEN; a wrong one costs a second and is counted."""
    parts = components()
    typed = str(request_.form.get("token") or "")
    if hmac.compare_digest(typed.encode(), parts.settings.admin_token.encode()):
        session.clear()
        session["admin"] = _token_mark(parts.settings.admin_token)
        log.info("admin login")
        return True
    parts.counters.add("admin_login_failures")
    log.warning("admin login refused")
    time.sleep(FAILED_LOGIN_DELAY_SECONDS)
    return False


def safe_next(target: str | None) -> str:
    """Where to go after the login: a path of this site only (never another host)."""
    # Browsers read a backslash as a slash: "/\\evil.example" would be another host.
    if (
        target
        and target.startswith("/")
        and not target.startswith("//")
        and "\\" not in target
        and not urlsplit(target).netloc
    ):
        return target
    return url_for("admin_pages.chats")


def login_page(error: str = "", status: int = 200) -> tuple[str, int]:
    return render_template("admin/login.html", error=error, next=request.args.get("next", "")), status
