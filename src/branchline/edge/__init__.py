"""branchline's edge: the local reverse proxy that routes HTTP by Host header to the
process that currently serves each environment's service (see `proxy.py`).

The proxy is imported when first asked for: a command that only reads the edge's
state file (`status`, `pr list`) must not pay for the HTTP machinery."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from branchline.edge.proxy import EdgeProxy
    from branchline.store.routes import RouteRow, normalize_host

__all__ = ["EdgeProxy", "RouteRow", "normalize_host"]


def __getattr__(name: str) -> Any:
    if name == "EdgeProxy":
        from branchline.edge.proxy import EdgeProxy

        return EdgeProxy
    if name in ("RouteRow", "normalize_host"):
        from branchline.store import routes

        return getattr(routes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
