"""A plain HTTP server on $PORT, in the ways a service may start and stop:

python plain_server.py               serve here
python plain_server.py --daemonise   fork twice, leave the session, serve from
                                     the grandchild; the first process exits 0
python plain_server.py --slow-stop   take one second to shut down on SIGTERM
                                     (finishing requests, closing connections)
"""

import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from hosts import verdict


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status, body = verdict(self.headers.get("Host", ""))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def serve(slow_stop: bool) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)

    def stop(_signum: int, _frame: object) -> None:
        if slow_stop:
            time.sleep(1.0)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    print(f"serving on {os.environ['PORT']} as pid {os.getpid()}", flush=True)
    server.serve_forever()


def daemonise() -> None:
    if os.fork() > 0:
        os._exit(0)  # the first process: its job is done
    os.setsid()  # leave the service's session and process group
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")


if __name__ == "__main__":
    if "--daemonise" in sys.argv:
        daemonise()
    serve(slow_stop="--slow-stop" in sys.argv)
