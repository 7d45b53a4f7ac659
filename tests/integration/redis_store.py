"""A redis-server of the tests' own (Debian's package) on a free loopback port, and the
few commands the tests send it, spoken in RESP over a socket."""

import shutil
import socket
import subprocess
import time

from spin import free_port


class RedisServer:
    def __init__(self, directory):
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError("redis-server is missing: scripts/test installs it (apt-get install redis-server)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        args = [server, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"]
        self.log = open(directory / "redis.log", "w")
        self.process = subprocess.Popen(args + ["--dir", str(directory)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.command("PING") == "PONG":
                    return
            except OSError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def command(self, *words):
        request = b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w.encode()), w.encode()) for w in words)
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(request)
            return read_reply(sock.makefile("rb"))

    def contents(self):
        """Every key and its value: {key: text}."""
        return {key: self.command("GET", key) for key in self.command("KEYS", "*")}

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=10)
        self.log.close()


def read_reply(stream):
    line = stream.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:].decode()
    if kind == b"+":
        return rest
    if kind == b"-":
        raise RuntimeError(f"redis: {rest}")
    if kind == b":":
        return int(rest)
    if kind == b"$":
        if int(rest) < 0:
            return None
        data = stream.read(int(rest) + 2)[:-2]
        return data.decode(errors="replace")
    if kind == b"*":
        return [read_reply(stream) for _ in range(int(rest))]
    raise RuntimeError(f"redis: unexpected reply {line!r}")
