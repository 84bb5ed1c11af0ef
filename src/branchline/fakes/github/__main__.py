"""`python -m branchline.fakes.github --state-dir DIR --ready-file FILE [...]`: the fake
GitHub REST API on 127.0.0.1. Once it answers it writes `{"url", "repository", "pid"}`
to the ready file; on SIGTERM or SIGINT it exits 0. Secrets come by environment:
`GITHUB_TOKEN` (the personal token it accepts) and `GITHUB_APP_PRIVATE_KEY` (the App's
PEM key, private or public) with `--app-id`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from branchline.fakes.github.app import FakeGitHubApp, build_app
from branchline.fakes.github.spec import openapi
from branchline.fakes.running import serve_until_stopped

logger = logging.getLogger("branchline.fakes.github")


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
    await asyncio.to_thread(openapi)  # the document, parsed before the first request
    await serve_until_stopped(app, name="GitHub", port=args.port, ready_file=args.ready_file,
                              facts={"repository": args.repository})  # fmt: skip


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
