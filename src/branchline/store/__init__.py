"""The control-plane state: SQL migrations and query functions (psycopg 3)."""

from branchline.store.state import StartReport, StateLocation, Store, locate_state

__all__ = ["StartReport", "StateLocation", "Store", "locate_state"]
