"""`python -m branchline.fakes.neon --state-dir DIR --ready-file FILE [...]`: the fake
Neon API on 127.0.0.1. Once it answers it writes `{"url", "project_id", "pid"}` to the
ready file; on SIGTERM or SIGINT it stops every cluster it started (and its state
database) and exits 0. The API key comes from `NEON_API_KEY` (or `--api-key`, for tests).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from branchline.fakes.neon.app import FakeNeonApp
from branchline.fakes.neon.spec import API_PREFIX, openapi
from branchline.fakes.neon.world import NeonWorld
from branchline.fakes.running import serve_until_stopped

logger = logging.getLogger("branchline.fakes.neon")


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
        await serve_until_stopped(
            FakeNeonApp(world, api_key), name="Neon", port=args.port,
            ready_file=args.ready_file, url_path=API_PREFIX,
            facts={"project_id": world.project_id},
        )  # fmt: skip
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
