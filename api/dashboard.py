"""The status dashboard: one page and its script and style, served from
static/ in the repository (no build step, nothing from another site), so it
works on a cluster with no way out. The page logs in through
/api/user/login and keeps its token in the tab's session storage, sent as a
Bearer header: no cookie, so no request forgery to guard against."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, redirect, send_from_directory

from model.errors import NotFound

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
ASSETS = frozenset({"dashboard.js", "dashboard.css"})

bp = Blueprint("dashboard", __name__)

# Everything the page loads is its own: no inline script, no other origin.
# A script injected through some node field could not run, nor send the
# token anywhere.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)


@bp.get("/")
def root() -> Response:
    """Redirects to the dashboard (302)."""
    return redirect("/dashboard", code=302)


@bp.get("/dashboard")
def dashboard() -> Response:
    """The status dashboard: one page that logs in and polls GET /api/node/stats."""
    return send_from_directory(STATIC_DIR, "dashboard.html", max_age=0)


@bp.get("/static/<file>")
def static(file: str) -> Response:
    """The dashboard's script and style, and nothing else from static/."""
    if file not in ASSETS:
        raise NotFound(f"no such file: {file[:64]!r}")
    return send_from_directory(STATIC_DIR, file, max_age=60)


@bp.after_request
def secure_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    return response
