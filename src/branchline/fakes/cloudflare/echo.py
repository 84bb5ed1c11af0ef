"""`python -m branchline.fakes.cloudflare.echo --body FILE --script S --version V
--ready-file F`: the tests' stand-in for a running Worker (see `runners`): every
request gets FILE's bytes, with headers naming the script and version. Writes
`{"url"}` to the ready file once it listens; exits on SIGTERM."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m branchline.fakes.cloudflare.echo")
    parser.add_argument("--body", type=Path, required=True)
    parser.add_argument("--script", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--ready-file", type=Path, required=True)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    body = args.body.read_bytes()
    script, version = args.script, args.version

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, with_body: bool) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/plain; charset=utf-8")
            self.send_header("content-length", str(len(body)))
            self.send_header("cf-fake-script", script)
            self.send_header("cf-fake-version", version)
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def do_GET(self) -> None:
            self._answer(True)

        def do_POST(self) -> None:
            self._answer(True)

        def do_HEAD(self) -> None:
            self._answer(False)

        def log_message(self, format: str, *values: object) -> None:
            pass  # a health check's every poll is not worth a line

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    partial = args.ready_file.with_name(args.ready_file.name + ".partial")
    partial.write_text(json.dumps({"url": f"http://127.0.0.1:{server.server_address[1]}"}))
    partial.replace(args.ready_file)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
