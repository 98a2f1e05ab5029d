"""/openapi.json, and Swagger UI at /docs to read it. Swagger UI's files come
from the pinned flask-swagger-ui package (its dist/ folder, Apache-2.0) and are
served by nvllm itself: no CDN, so the page works on an air-gapped cluster."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from flask import Blueprint, Response, current_app, jsonify, send_from_directory

from model.errors import NotFound

bp = Blueprint("docs", __name__)

# Only these files of the package are served; anything else is a 404.
ASSETS = ("swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png", "LICENSE")
ASSET_CACHE_SECONDS = 24 * 3600

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>nvllm API</title>
  <link rel="stylesheet" href="docs/swagger-ui.css">
  <link rel="icon" type="image/png" href="docs/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="docs/swagger-ui-bundle.js"></script>
  <script src="docs/init.js"></script>
</body>
</html>
"""
# Relative URLs, so the page also works behind a proxy that adds a prefix.
# validatorUrl null: Swagger UI would otherwise send the description to a
# public validator.
INIT = """window.ui = SwaggerUIBundle({
  url: "openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout"
});
"""


def swagger_ui_dir() -> Path:
    return Path(str(resources.files("flask_swagger_ui") / "dist"))


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3.1 description of every route: paths, roles, request and
    response schemas, error codes."""
    from api.openapi import build_document

    document = current_app.extensions.get("nvllm.openapi")
    if document is None:
        document = current_app.extensions["nvllm.openapi"] = build_document(current_app)
    return jsonify(document)


@bp.get("/docs")
def ui() -> Response:
    """Swagger UI, reading /openapi.json; Authorize takes a token from login."""
    return Response(PAGE, mimetype="text/html")


@bp.get("/docs/<asset>")
def asset(asset: str) -> Response:
    """Swagger UI's own files, and the few lines that start it."""
    if asset == "init.js":
        return Response(INIT, mimetype="text/javascript")
    if asset not in ASSETS:
        raise NotFound(f"no such file: {asset[:64]!r}")
    response = send_from_directory(swagger_ui_dir(), asset, max_age=ASSET_CACHE_SECONDS)
    if asset == "LICENSE":
        response.mimetype = "text/plain"
    return response
