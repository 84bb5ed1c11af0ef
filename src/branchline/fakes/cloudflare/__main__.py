"""`python -m branchline.fakes.cloudflare --state-dir DIR --ready-file FILE [...]`: the
fake Cloudflare API on 127.0.0.1 (under /client/v4). Once it answers it writes
`{"url", "account_id", "zones", "pid"}` to the ready file; on SIGTERM or SIGINT it
stops every deployed version it runs and exits 0. The API token it accepts comes from
`CLOUDFLARE_API_TOKEN`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from branchline.fakes.cloudflare.app import FakeCloudflareApp, build_app
from branchline.fakes.cloudflare.runners import DEFAULT_RUNNER, RUNNERS
from branchline.fakes.cloudflare.spec import API_PREFIX, openapi
from branchline.fakes.running import serve_until_stopped

logger = logging.getLogger("branchline.fakes.cloudflare")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m branchline.fakes.cloudflare", description=__doc__
    )
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--account-id", default=None)
    parser.add_argument("--zone", action="append", default=[], help="a zone it holds (repeat)")
    parser.add_argument("--subdomain", default="branchline-fake")
    # workerd runs the uploaded JavaScript; echo-for-tests is the fake's own tests' stand-in.
    parser.add_argument("--runner", choices=sorted(RUNNERS), default=DEFAULT_RUNNER)
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace, app: FakeCloudflareApp) -> None:
    await asyncio.to_thread(openapi)  # the documents, parsed before the first request
    zones = {name: zone_id for zone_id, name in app.world.zones.items()}
    await serve_until_stopped(
        app, name="Cloudflare", port=args.port, ready_file=args.ready_file,
        url_path=API_PREFIX, facts={"account_id": app.world.account_id, "zones": zones},
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    token = os.environ.get("CLOUDFLARE_API_TOKEN", "")
    if not token:
        print("the fake Cloudflare needs CLOUDFLARE_API_TOKEN", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    runner = RUNNERS[args.runner](args.state_dir.absolute() / "workers")
    app = build_app(
        token=token, runner=runner, account_id=args.account_id,
        zones=tuple(args.zone or ["example.com"]), subdomain=args.subdomain or None,
    )  # fmt: skip
    try:
        asyncio.run(serve(args, app))
    finally:
        app.close()  # every deployed version it runs stops with it
    return 0


if __name__ == "__main__":
    sys.exit(main())
