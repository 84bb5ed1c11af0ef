"""`python -m branchline.fakes.github --state-dir DIR --ready-file FILE [...]`: the fake
GitHub REST API on 127.0.0.1. Once it answers it writes `{"url", "repository", "pid"}`
to the ready file; on SIGTERM or SIGINT it exits 0. Secrets come by environment:
`GITHUB_TOKEN` (the personal token it accepts) and `GITHUB_APP_PRIVATE_KEY` (the App's
PEM key, private or public) with `--app-id`."""

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

from branchline.fakes.github.app import FakeGitHubApp, build_app
from branchline.fakes.github.spec import openapi

logger = logging.getLogger("branchline.fakes.github")


class _Server(uvicorn.Server):
    """uvicorn whose signals are the runner's: a SIGTERM ends in a clean exit 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m branchline.fakes.github", description=__doc__)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--repository", default="octo/codex")
    parser.add_argument("--app-id", type=int, default=None)
    parser.add_argument("--installation-id", type=int, default=1)
    parser.add_argument("--token-lifetime", type=float, default=3600.0)
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace, app: FakeGitHubApp) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await asyncio.to_thread(openapi)  # the document, parsed before the first request
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
        raise SystemExit("the fake GitHub could not start serving")
    port = server.servers[0].sockets[0].getsockname()[1]
    ready = {"url": f"http://127.0.0.1:{port}", "repository": args.repository, "pid": os.getpid()}
    partial = args.ready_file.with_name(args.ready_file.name + ".partial")
    partial.write_text(json.dumps(ready))
    partial.replace(args.ready_file)
    logger.warning("fake github: serving %s on %s", args.repository, ready["url"])
    await asyncio.wait({serving, asyncio.ensure_future(stop.wait())},
                       return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
    server.should_exit = True
    await serving


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    token = os.environ.get("GITHUB_TOKEN", "")
    key = os.environ.get("GITHUB_APP_PRIVATE_KEY") or None
    if not token and not key:
        print("the fake GitHub needs GITHUB_TOKEN or GITHUB_APP_PRIVATE_KEY", file=sys.stderr)
        return 2
    if key and args.app_id is None:
        print("the fake GitHub's App key needs --app-id", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    app = build_app(
        args.repository, token=token, app_id=args.app_id, app_key_pem=key,
        installation_id=args.installation_id, token_lifetime=args.token_lifetime,
    )  # fmt: skip
    asyncio.run(serve(args, app))
    return 0


if __name__ == "__main__":
    sys.exit(main())
