"""The HTTP side of `branchline serve`: GitHub-compatible webhooks, health, metrics."""
