"""The threaded HTTP server on 127.0.0.1 behind the tests' stand-ins for AWS and its
metadata services (faults.py, metadata.py, world.py): an ephemeral port, served by a
daemon thread for the length of a `with` block; and the clock of the tests' AWS world.

The component reads AWS's time from the `Date` of every answer (and plans, judges leases
and records in that time), so every answer from the tests' AWS world carries the world's
time: real time moved `WORLD.shift_s` ahead, which is how a test runs a tick "later"
(world.py shifts moto's own answers the same way)."""

import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class WorldClock:
    """The time of the tests' AWS world: real time, `shift_s` seconds ahead."""

    def __init__(self):
        self.shift_s = 0

    def time(self):
        return time.time() + self.shift_s

    def now(self):
        return datetime.now(timezone.utc) + timedelta(seconds=self.shift_s)


WORLD = WorldClock()


class QuietHandler(BaseHTTPRequestHandler):
    """HTTP/1.1, so the component's connections are kept alive as AWS keeps them, no
    access log on the test's output, and the world's time in every answer's `Date`."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def date_time_string(self, timestamp=None):
        return super().date_time_string(WORLD.time() if timestamp is None else timestamp)


class LocalServer:
    """Serves `handler` (a QuietHandler subclass) at `self.url` inside `with`; with none,
    every request, whatever its method, goes to `self.handle(handler, body)` with its body
    read."""

    def __init__(self, handler=None):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler or self.any_method())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def any_method(self):
        """A handler that hands every request to `self.handle(handler, body)`."""
        server = self

        class Handler(QuietHandler):
            def do_GET(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.handle(self, body)

            do_POST = do_PUT = do_DELETE = do_HEAD = do_LIST = do_GET

        return Handler

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
