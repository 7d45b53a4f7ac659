"""The threaded HTTP server on 127.0.0.1 behind the tests' stand-ins for AWS and its
metadata services (faults.py, metadata.py): an ephemeral port, served by a daemon thread
for the length of a `with` block."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class QuietHandler(BaseHTTPRequestHandler):
    """HTTP/1.1, so the component's connections are kept alive as AWS keeps them, and no
    access log on the test's output."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass


class LocalServer:
    """Serves `handler` (a QuietHandler subclass) at `self.url` inside `with`."""

    def __init__(self, handler):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
