"""`python -m branchline.fakes.neon --state-dir DIR --ready-file FILE [...]`: the fake
Neon API on 127.0.0.1. Once it answers it writes `{"url", "project_id", "pid"}` to the
ready file; on SIGTERM or SIGINT it stops every cluster it started (and its state
database) and exits 0. The API key comes from `NEON_API_KEY` (or `--api-key`, for tests).
"""

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

from branchline.fakes.neon.app import FakeNeonApp
from branchline.fakes.neon.spec import API_PREFIX, openapi
from branchline.fakes.neon.world import NeonWorld

logger = logging.getLogger("branchline.fakes.neon")


class _Server(uvicorn.Server):
    """uvicorn whose signals are the runner's: a SIGTERM ends in a clean exit 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m branchline.fakes.neon", description=__doc__)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default=None, help="default: $NEON_API_KEY")
    parser.add_argument("--project-id", default=None)
    parser.add_argument("--operation-delay", type=float, default=0.2)
    parser.add_argument("--branch-limit", type=int, default=10)
    parser.add_argument("--default-branch", default="production")
    parser.add_argument("--database", default="neondb")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace, api_key: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await asyncio.to_thread(openapi)  # the document, parsed before the first request
    world = NeonWorld(
        args.state_dir.absolute(),
        project_id=args.project_id,
        default_branch=args.default_branch,
        database=args.database,
        operation_delay=args.operation_delay,
        branch_limit=args.branch_limit,
    )
    try:
        await world.open()
        server = _Server(
            uvicorn.Config(
                FakeNeonApp(world, api_key), host="127.0.0.1", port=args.port,
                log_level="warning", access_log=False, lifespan="off",
            )
        )  # fmt: skip
        serving = asyncio.ensure_future(server.serve())
        while not server.started and not serving.done():
            await asyncio.sleep(0.02)
        if serving.done():
            await serving  # it could not listen: its error ends the process
            raise SystemExit("the fake Neon could not start serving")
        port = server.servers[0].sockets[0].getsockname()[1]
        ready = {
            "url": f"http://127.0.0.1:{port}{API_PREFIX}",
            "project_id": world.project_id,
            "pid": os.getpid(),
        }
        partial = args.ready_file.with_name(args.ready_file.name + ".partial")
        partial.write_text(json.dumps(ready))
        partial.replace(args.ready_file)
        logger.warning("fake neon: serving project %s on %s", world.project_id, ready["url"])
        await asyncio.wait({serving, asyncio.ensure_future(stop.wait())},
                           return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        server.should_exit = True
        await serving
    finally:
        await world.close()


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    api_key = args.api_key or os.environ.get("NEON_API_KEY", "")
    if not api_key:
        print("the fake Neon needs an API key: set NEON_API_KEY", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(serve(args, api_key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
