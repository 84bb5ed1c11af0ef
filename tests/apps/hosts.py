"""What Django's ALLOWED_HOSTS and Starlette's TrustedHostMiddleware do: a request
for a host name not in ALLOWED_HOSTS (comma-separated; empty: any) gets a 400."""

import json
import os

ALLOWED = [h.strip() for h in os.environ.get("ALLOWED_HOSTS", "").split(",") if h.strip()]


def verdict(host_header: str) -> tuple[int, bytes]:
    """(status, body) for a request that named `host_header`."""
    host = host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header
    if ALLOWED and host not in ALLOWED:
        return 400, f"Bad Request (400): invalid HTTP_HOST header: {host!r}".encode()
    facts = {"commit": os.environ.get("BRANCHLINE_COMMIT"), "pid": os.getpid(), "host": host}
    return 200, json.dumps(facts).encode()
