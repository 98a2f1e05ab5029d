"""The dashboard page and its assets: served by nvllm itself, public (the page
asks for a login), locked down by its headers, with nothing from elsewhere."""

from __future__ import annotations

import re

import pytest

from api.dashboard import STATIC_DIR
from tests.helpers import error_text

ASSETS = ["/static/dashboard.js", "/static/dashboard.css"]


def test_root_redirects_to_the_dashboard(client):
    response = client.get("/")
    assert response.status_code == 302 and response.headers["Location"] == "/dashboard"


@pytest.mark.parametrize("path", ["/dashboard", *ASSETS])
def test_page_and_assets_are_served_with_a_strict_policy(client, path):
    response = client.get(path)
    assert response.status_code == 200, path
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "Set-Cookie" not in response.headers


def test_the_page_loads_only_its_own_assets():
    """No CDN: every URL the page or its script names is a path on nvllm."""
    html = (STATIC_DIR / "dashboard.html").read_text(encoding="utf-8")
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert set(refs) == {"/static/dashboard.css", "/static/dashboard.js", "data:,"}
    script = (STATIC_DIR / "dashboard.js").read_text(encoding="utf-8")
    style = (STATIC_DIR / "dashboard.css").read_text(encoding="utf-8")
    for text in (html, script, style):
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text)
        assert "@import" not in text
    assert "<script>" not in html  # inline scripts would be refused by the policy anyway
    # Server values reach the page as text only; the token is never a cookie.
    assert "innerHTML" not in script and "document.cookie" not in script
    assert "sessionStorage" in script and "localStorage" not in script


def test_an_unknown_asset_is_a_404_and_no_path_leaves_static(client):
    assert "nope.js" in error_text(client.get("/static/nope.js"), 404)
    assert client.get("/static/../main.py").status_code == 404
    assert client.get("/static/%2e%2e/main.py").status_code == 404
