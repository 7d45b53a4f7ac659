"""moto_server as the tests' AWS world: a proxy in front of it that forwards every
request unchanged (so signatures still verify) and answers in the world's time
(local_http.WORLD): the `Date` header and the `Expiration` of issued credentials move
with `WORLD.shift_s`. moto itself runs on real time and checks no request's time.

A tick "later" is then later for the component as it is for AWS: the expirations it
recorded are nearer, and the time it learns from AWS's answers agrees with its own clock
(spin.py moves that too, with libfaketime)."""

import http.client
import re
from datetime import datetime, timedelta
from urllib.parse import urlparse

from local_http import WORLD, LocalServer

# Hop-by-hop headers, and those the front sets itself.
NOT_FORWARDED = {"connection", "keep-alive", "transfer-encoding", "content-length", "date", "server"}
EXPIRATION = re.compile(rb"<Expiration>([^<]+)</Expiration>")


class AwsFront(LocalServer):
    """Forwards any request to `upstream` (moto) and answers with its status, headers and
    body, in the world's time."""

    def __init__(self, upstream):
        self.upstream = urlparse(upstream)
        super().__init__()

    def handle(self, handler, body):
        connection = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in NOT_FORWARDED}
        connection.request(handler.command, handler.path, body=body, headers=headers)
        response = connection.getresponse()
        payload = shifted(response.read())
        connection.close()
        handler.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in NOT_FORWARDED:
                handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(payload)


def shifted(payload):
    """`payload` with every `<Expiration>` moved `WORLD.shift_s` ahead."""
    if not WORLD.shift_s:
        return payload

    def later(match):
        moment = datetime.fromisoformat(match.group(1).decode().replace("Z", "+00:00"))
        moved = moment + timedelta(seconds=WORLD.shift_s)
        return b"<Expiration>" + moved.strftime("%Y-%m-%dT%H:%M:%SZ").encode() + b"</Expiration>"

    return EXPIRATION.sub(later, payload)
