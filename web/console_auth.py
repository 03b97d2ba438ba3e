"""The console's login: ADMIN_TOKEN typed into a form opens a signed session cookie (HttpOnly, SameSite=Lax, Secure
when the request came over HTTPS); failed logins wait a second each and are counted. The pages' forms carry CSRF
tokens (Flask-WTF's CSRFProtect, set up by create_app); the JSON API keeps its bearer token instead.

A tenant's own ADMIN_TOKEN (TENANTS_FILE) opens a session that sees only that tenant (web/admin_auth.py's scope):
its chats, search results, deliveries and knowledge; the deployment's pages (status, the simulator) answer it a 403
page that says so."""

from __future__ import annotations

import hashlib
import logging
import time
from urllib.parse import urlsplit

from flask import Request, Response, g, make_response, redirect, render_template, request, session, url_for
from werkzeug.exceptions import NotFound

from web import components
from web.admin_auth import EVERY_TENANT, scope_of, tenant_tokens
from web.console import check_form_token

log = logging.getLogger(__name__)

FAILED_LOGIN_DELAY_SECONDS = 1.0
# The pages about the whole deployment, which a tenant's session does not see.
DEPLOYMENT_PAGES = frozenset({"admin_pages.status"})
DEPLOYMENT_PAGE_TEXT = "Esta página é da implantação inteira; entre com o token do administrador geral."


def _token_mark(token: str) -> str:
    """What the session remembers of the token it was opened with: changing ADMIN_TOKEN logs everyone out."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def session_scope() -> str | None:
    """Whom the session was opened for (EVERY_TENANT, or a tenant's id), None without one, or when the token it was
    opened with changed since."""
    scope = str(session.get("scope", EVERY_TENANT))
    token = components().settings.admin_token if scope == EVERY_TENANT else tenant_tokens().get(scope, "")
    return scope if token and session.get("admin") == _token_mark(token) else None


def logged_in() -> bool:
    """Logged in with the deployment's ADMIN_TOKEN (the simulator asks this)."""
    return session_scope() == EVERY_TENANT


def require_login() -> Response | None:
    """A blueprint's before_request: 404 while no admin token is set, the login page without a session, and then
    (the login form included) a 400 for a form posted without its CSRF token."""
    if not components().settings.admin_token and not tenant_tokens():
        raise NotFound("the admin side is off: set ADMIN_TOKEN")
    scope = session_scope()
    if request.endpoint not in ("admin_pages.login", "admin_pages.logout"):
        if scope is None:
            return redirect(url_for("admin_pages.login", next=request.full_path.rstrip("?")))
        g.admin_scope = scope
        if scope != EVERY_TENANT and request.endpoint in DEPLOYMENT_PAGES:
            return deployment_page_refused()
    check_form_token()
    return None


def is_tenant_session() -> bool:
    """Logged in with a tenant's own ADMIN_TOKEN (not the deployment's)."""
    return session_scope() not in (None, EVERY_TENANT)


def deployment_page_refused() -> Response:
    """The 403 a tenant's session gets on a page of the whole deployment: a page of the panel, in pt-BR, with the
    tenant's own links (the JSON API keeps its JSON 403)."""
    page = render_template(
        "admin/refused.html", heading="Acesso restrito", text=DEPLOYMENT_PAGE_TEXT, deployment_admin=False
    )
    return make_response(page, 403)


def try_login(request_: Request) -> bool:
    """Open the session when the form's token is ADMIN_TOKEN (or a tenant's own); a wrong one costs a second and is
    counted."""
    parts = components()
    typed = str(request_.form.get("token") or "")
    scope = scope_of(typed) if typed else None
    if scope is not None:
        session.clear()
        session["admin"] = _token_mark(typed)
        session["scope"] = scope
        log.info("admin login%s", f" tenant={scope}" if scope else "")
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
