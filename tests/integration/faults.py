"""A fault-injecting HTTP proxy between the component (under `spin up`) and moto_server.

Each request is forwarded to moto unchanged (so signatures still verify) unless the seeded
random draw picks a fault: HTTP 500/503, throttling in the shape of the protocol asked
(STS XML `Throttling`, Secrets Manager JSON `ThrottlingException`, Vault's HTTP 429),
added latency, a
connection reset, a truncated body, garbage, an endless body, or silence (the request is
read and never answered).
"""

import http.client
import json
import random
import socket
import threading
import time
from datetime import datetime, timedelta
from urllib.parse import parse_qs, urlparse

from local_http import WORLD, LocalServer, QuietHandler

KINDS = ("http500", "http503", "throttle", "latency", "reset", "truncated", "garbage", "huge", "silent")


# What the component asks STS only to learn AWS's time, before any lease.
THE_TIME = "sts.GetCallerIdentity"


def operation_of(handler, body):
    """A request's operation: its JSON target, or `sts.<Action>` of the query protocol."""
    target = handler.headers.get("X-Amz-Target")
    return target or "sts." + (parse_qs(body.decode(errors="replace")).get("Action") or ["?"])[0]


class FaultProxy(LocalServer):
    """`spare`: operations (see operation_of) always forwarded unharmed, e.g. THE_TIME for
    a test about what happens to the accounts."""

    def __init__(self, upstream, kinds=KINDS, rate=0.0, seed=7, latency=0.2, spare=()):
        self.upstream = urlparse(upstream)
        self.spare = set(spare)
        self.kinds = list(kinds)
        self.rate = rate
        self.latency = latency
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.injected = []
        self.stopping = threading.Event()
        self.forwarded = 0
        proxy = self

        class Handler(QuietHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                proxy.handle(self, body)

            # Vault's API reads with GET (AWS's only POSTs).
            do_GET = do_PUT = do_DELETE = do_POST

        super().__init__(Handler)

    def __exit__(self, *exc):
        self.stopping.set()
        super().__exit__(*exc)

    def draw(self):
        with self.lock:
            if self.random.random() < self.rate:
                kind = self.random.choice(self.kinds)
                self.injected.append(kind)
                return kind
            self.forwarded += 1
            return None

    def choose(self, handler, body):
        """The fault for one request, or None to forward it: the seeded draw, unless the
        operation is spared. A subclass may choose by the request instead."""
        if operation_of(handler, body) in self.spare:
            with self.lock:
                self.forwarded += 1
            return None
        return self.draw()

    def handle(self, handler, body):
        kind = self.choose(handler, body)
        is_json = "X-Amz-Target" in handler.headers
        if kind == "latency":
            threading.Event().wait(self.latency)
            kind = None
        if kind is None:
            status, headers, payload = self.forward(handler, body)
            reply(handler, status, payload, headers.get("Content-Type"))
        elif kind in ("http500", "http503"):
            reply(handler, int(kind[4:]), b"<html>upstream unavailable</html>", "text/html")
        elif kind == "throttle":
            if handler.path.startswith("/v1/"):
                reply(handler, 429, b'{"errors":["rate limit quota exceeded"]}', "application/json")
            elif is_json:
                reply(handler, 400, b'{"__type":"ThrottlingException","message":"Rate exceeded"}', "application/x-amz-json-1.1")
            else:
                throttled = b"<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error></ErrorResponse>"
                reply(handler, 400, throttled, "text/xml")
        elif kind == "reset":
            handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            handler.close_connection = True
            handler.connection.close()
        elif kind == "truncated":
            status, headers, payload = self.forward(handler, body)
            handler.send_response(status)
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload[: len(payload) // 2])
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
        elif kind == "drop_answer":
            self.forward(handler, body)
            drop_answer(handler)
        elif kind == "silent":
            self.stopping.wait(60)
            handler.close_connection = True
        elif kind == "garbage":
            reply(handler, 200, bytes(self.random.getrandbits(8) for _ in range(200)), "text/xml")
        elif kind == "huge":
            handler.send_response(200)
            handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()
            chunk = b"<" * 65536
            try:
                for _ in range(64):  # 4 MiB, far past the component's limit
                    handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                handler.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass
            handler.close_connection = True

    def forward(self, handler, body):
        connection = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=30)
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("connection",)}
        connection.request(handler.command, handler.path, body=body, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        connection.close()
        return response.status, dict(response.getheaders()), payload


def reply(handler, status, payload, content_type):
    handler.send_response(status)
    handler.send_header("Content-Type", content_type or "application/octet-stream")
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)


# How far AWS lets a request's signing time be from its own clock.
MAX_SKEW_S = 300


class ClockCheckingProxy(LocalServer):
    """A proxy in front of moto (which does not check when a request was signed) that
    refuses, as AWS does, a request whose `X-Amz-Date` is more than 5 minutes from the
    proxy's own clock: STS (query protocol) with XML `RequestTimeTooSkewed` (HTTP 403),
    the JSON services with `InvalidSignatureException` "Signature expired" (HTTP 400).
    Every answer carries the proxy's clock in `Date`, unless `send_date` is False.
    Anything else is forwarded, headers and all (`x-amzn-RequestId` included).

    `seen` holds (operation, refused, skew in seconds) per request, `request_ids` the
    `x-amzn-RequestId` of each answer forwarded."""

    def __init__(self, upstream, send_date=True):
        self.upstream = urlparse(upstream)
        self.send_date = send_date
        self.lock = threading.Lock()
        self.seen = []
        self.request_ids = []
        proxy = self

        class Handler(QuietHandler):
            def send_response(self, code, message=None):
                # send_response adds Date itself; without it, only the status line.
                self.log_request(code)
                self.send_response_only(code, message)
                if proxy.send_date:
                    self.send_header("Date", self.date_time_string())

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                proxy.handle(self, body)

        super().__init__(Handler)

    def refused(self):
        return [operation for operation, refused, _ in self.seen if refused]

    def handle(self, handler, body):
        target = handler.headers.get("X-Amz-Target")
        operation = operation_of(handler, body)
        signed = datetime.strptime(handler.headers.get("X-Amz-Date", "19700101T000000Z"), "%Y%m%dT%H%M%SZ")
        now = WORLD.now().replace(tzinfo=None)
        skew = (signed - now).total_seconds()
        refuse = abs(skew) > MAX_SKEW_S
        with self.lock:
            self.seen.append((operation, refuse, skew))
        if not refuse:
            status, headers, payload = FaultProxy.forward(self, handler, body)
            with self.lock:
                self.request_ids += [v for k, v in headers.items() if k.lower() == "x-amzn-requestid"]
            handler.send_response(status)
            for name, value in headers.items():
                if name.lower() not in ("connection", "content-length", "transfer-encoding", "date", "server"):
                    handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
            return
        stamp = lambda instant: instant.strftime("%Y%m%dT%H%M%SZ")
        if target:
            if skew < 0:
                limit = f"earlier than {stamp(now - timedelta(seconds=MAX_SKEW_S))} ({stamp(now)} - 5 min.)"
            else:
                limit = f"later than {stamp(now + timedelta(seconds=MAX_SKEW_S))} ({stamp(now)} + 5 min.)"
            message = f"Signature expired: {stamp(signed)} is now {limit}"
            reply(handler, 400, json.dumps({"__type": "InvalidSignatureException", "message": message}).encode(), "application/x-amz-json-1.1")
        else:
            message = "The difference between the request time and the current time is too large."
            answer = f"<ErrorResponse><Error><Type>Sender</Type><Code>RequestTimeTooSkewed</Code><Message>{message}</Message></Error><RequestId>skew-{len(self.seen)}</RequestId></ErrorResponse>"
            reply(handler, 403, answer.encode(), "text/xml")


def drop_answer(handler):
    """Closes the connection without a byte of answer. As kind "drop_answer" (never drawn
    unless `kinds` names it), the request is forwarded first: it has taken effect and the
    client cannot know."""
    handler.close_connection = True
    handler.connection.shutdown(socket.SHUT_RDWR)


class DropWriteAnswers(FaultProxy):
    """Forwards every request to moto; loses the answer of the first Secrets Manager
    write (`X-Amz-Target: secretsmanager.*`) that moto accepted (2xx) for each of the
    first `count` secrets so written: that write has landed, and the client only sees a
    closed connection ("drop_answer"), or with `garble` a complete 200 whose body cannot
    be read ("garble_answer"); its retry is answered. Every forwarded write is recorded
    in `writes`, in the order moto answered, as a dict with its `operation`, `secret`
    (SecretId or Name), `token` (ClientRequestToken), `status` and whether its answer
    was `dropped`; never its value."""

    def __init__(self, upstream, count, garble=False):
        super().__init__(upstream)
        self.count = count
        self.garble = garble
        self.writes = []

    def handle(self, handler, body):
        target = handler.headers.get("X-Amz-Target", "")
        if not target.startswith("secretsmanager."):
            return super().handle(handler, body)
        status, headers, payload = self.forward(handler, body)
        request = json.loads(body)
        with self.lock:
            self.forwarded += 1
            seen = {w["secret"] for w in self.writes if w["dropped"]}
            secret = request.get("SecretId") or request.get("Name")
            drop = 200 <= status < 300 and secret not in seen and len(seen) < self.count
            if drop:
                self.injected.append("garble_answer" if self.garble else "drop_answer")
            self.writes.append({
                "operation": target.split(".", 1)[1],
                "secret": secret,
                "token": request.get("ClientRequestToken"),
                "status": status,
                "dropped": drop,
            })
        if drop and self.garble:
            reply(handler, 200, b"\x00\x01 not JSON", headers.get("Content-Type"))
        elif drop:
            drop_answer(handler)
        else:
            reply(handler, status, payload, headers.get("Content-Type"))


class Watcher(FaultProxy):
    """Forwards every request, each after `latency` seconds, and calls `callback()` (in
    the proxy's thread, before forwarding) at the first request whose operation (see
    operation_of) starts with `prefix`: a fault triggered by an event. `seen` holds
    (time.monotonic(), operation) for every request."""

    def __init__(self, upstream, prefix, callback, latency=0.0):
        super().__init__(upstream, kinds=["latency"], rate=1.0 if latency else 0.0, latency=latency)
        self.prefix = prefix
        self.callback = callback
        self.fired = False
        self.seen = []

    def handle(self, handler, body):
        operation = operation_of(handler, body)
        with self.lock:
            self.seen.append((time.monotonic(), operation))
            fire = not self.fired and operation.startswith(self.prefix)
            self.fired = self.fired or fire
        if fire:
            self.callback()
        super().handle(handler, body)

    def since(self, instant, prefix):
        """The operations starting with `prefix` that arrived after `instant`."""
        with self.lock:
            return [operation for at, operation in self.seen if at > instant and operation.startswith(prefix)]


class Rendezvous(FaultProxy):
    """Holds every request until `count` requests of `operation` have arrived (at most
    `timeout` seconds), then forwards each after `latency` seconds: clients started one
    after the other, however late the machine lets the second start, meet at that
    operation and overlap from there."""

    def __init__(self, upstream, operation, count, latency=0.0, timeout=120):
        super().__init__(upstream, kinds=["latency"], rate=1.0 if latency else 0.0, latency=latency)
        self.operation = operation
        self.count = count
        self.timeout = timeout
        self.arrived = 0
        self.met = threading.Condition()

    def handle(self, handler, body):
        with self.met:
            if operation_of(handler, body) == self.operation:
                self.arrived += 1
                self.met.notify_all()
            self.met.wait_for(lambda: self.arrived >= self.count, timeout=self.timeout)
        super().handle(handler, body)
