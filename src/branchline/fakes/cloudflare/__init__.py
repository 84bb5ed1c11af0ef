"""A fake Cloudflare API (the Workers and DNS calls branchline makes) held to
Cloudflare's own OpenAPI documents, keeping one account's scripts, versions,
deployments, secrets, custom domains, routes and its zones' DNS records, and running
each deployed version on a `runners.Runner`: `FakeCloudflare.start(state_dir,
token=...)` runs it in a subprocess (`python -m branchline.fakes.cloudflare`);
`app.build_app` gives it as an ASGI app in this process."""

from branchline.fakes.cloudflare.process import FakeCloudflare, FakeCloudflareError

__all__ = ["FakeCloudflare", "FakeCloudflareError"]
