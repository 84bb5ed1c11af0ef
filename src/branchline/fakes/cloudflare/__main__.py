"""`python -m branchline.fakes.cloudflare --state-dir DIR --ready-file FILE [...]`: the
fake Cloudflare API on 127.0.0.1 (under /client/v4). Once it answers it writes
`{"url", "account_id", "zones", "pid"}` to the ready file; on SIGTERM or SIGINT it
stops every deployed version it runs and exits 0. The API token it accepts comes from
`CLOUDFLARE_API_TOKEN`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from branchline.fakes.cloudflare.app import FakeCloudflareApp, build_app
from branchline.fakes.cloudflare.runners import RUNNERS
from branchline.fakes.cloudflare.spec import API_PREFIX, openapi

logger = logging.getLogger("branchline.fakes.cloudflare")


class _Server(uvicorn.Server):
    """uvicorn whose signals are the runner's: a SIGTERM ends in a clean exit 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


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
    # Only the tests' stand-in exists yet (the workerd runner is to come).
    parser.add_argument("--runner", choices=sorted(RUNNERS), default="echo-for-tests")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace, app: FakeCloudflareApp) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await asyncio.to_thread(openapi)  # the documents, parsed before the first request
    config = uvicorn.Config(
        app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False,
        lifespan="off",
    )  # fmt: skip
    server = _Server(config)
    serving = asyncio.ensure_future(server.serve())
    while not server.started and not serving.done():
        await asyncio.sleep(0.02)
    if serving.done():
        await serving  # it could not listen: its error ends the process
        raise SystemExit("the fake Cloudflare could not start serving")
    port = server.servers[0].sockets[0].getsockname()[1]
    ready = {
        "url": f"http://127.0.0.1:{port}{API_PREFIX}",
        "account_id": app.world.account_id,
        "zones": {name: zone_id for zone_id, name in app.world.zones.items()},
        "pid": os.getpid(),
    }
    partial = args.ready_file.with_name(args.ready_file.name + ".partial")
    partial.write_text(json.dumps(ready))
    partial.replace(args.ready_file)
    logger.warning("fake cloudflare: serving account %s on %s", app.world.account_id,
                   ready["url"])  # fmt: skip
    await asyncio.wait({serving, asyncio.ensure_future(stop.wait())},
                       return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
    server.should_exit = True
    await serving


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
