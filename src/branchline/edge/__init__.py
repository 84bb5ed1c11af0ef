"""branchline's edge: the local reverse proxy that routes HTTP by Host header to the
process that currently serves each environment's service (see `proxy.py`)."""

from branchline.edge.proxy import EdgeProxy
from branchline.store.routes import RouteRow, normalize_host

__all__ = ["EdgeProxy", "RouteRow", "normalize_host"]
