"""Model alias routes (admin): a client-facing name for a served model."""

from __future__ import annotations

from flask import Blueprint, Response

from api import json_body, ok
from middleware.auth import require_role
from middleware.services import services
from service import alias as aliases
from service.alias import AliasBook

bp = Blueprint("alias", __name__, url_prefix="/api/alias")


def _book() -> AliasBook:
    return services().aliases


@bp.get("/all")
@require_role("admin")
def all_aliases() -> Response:
    """Every alias, sorted: `{"alias", "model", "listed"}`."""
    return ok([a.to_dict() for a in aliases.list_aliases(_book())])


@bp.post("/set")
@require_role("admin")
def set_alias() -> Response:
    """Create or replace an alias; 409 when it would chain to another alias."""
    return ok(aliases.set_alias(_book(), json_body()).to_dict())


# path: aliases may hold '/' (org/model), as model names do.
@bp.delete("/delete/<path:name>")
@require_role("admin")
def delete(name: str) -> Response:
    """Remove an alias (its name may hold `/`); 404 when there is none."""
    aliases.delete_alias(_book(), name)
    return ok({"alias": name})
