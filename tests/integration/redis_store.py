"""A redis-server of the tests' own (Debian's package) on a free loopback port, and the
few commands the tests send it, spoken in RESP over a socket."""

import contextlib
import shutil
import socket
import subprocess
import time

from spin import free_port


class RedisServer:
    """`appendonly` keeps the data in an append-only file in `directory`, as an operator
    would run it, so that it survives `restart()` (the soak restarts it under load)."""

    def __init__(self, directory, appendonly=False):
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError("redis-server is missing: scripts/test installs it (apt-get install redis-server)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.directory = directory
        persistence = ["--appendonly", "yes", "--appendfsync", "everysec"] if appendonly else ["--appendonly", "no"]
        self.args = [server, "--bind", "127.0.0.1", "--port", str(self.port), "--save", ""] + persistence
        self.log = open(directory / "redis.log", "w")
        self.start()

    def start(self):
        """Starts redis-server on this port and directory; returns once it answers PING."""
        self.process = subprocess.Popen(self.args + ["--dir", str(self.directory)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.command("PING") == "PONG":
                    return
            except (OSError, RuntimeError):
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def restart(self, down_s=0.0):
        """Shuts redis-server down (SIGTERM: it finishes its append-only file) and starts
        it again on the same port after `down_s` seconds."""
        self.process.terminate()
        self.process.wait(timeout=30)
        time.sleep(down_s)
        self.start()

    @contextlib.contextmanager
    def session(self):
        """One connection: yields `send(*words)`, which returns the reply (for WATCH,
        MULTI and EXEC, which belong to one connection)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            replies = sock.makefile("rb")

            def send(*words):
                encoded = [w.encode() for w in words]
                sock.sendall(b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in encoded))
                return read_reply(replies)

            yield send

    def command(self, *words):
        with self.session() as send:
            return send(*words)

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
        if int(rest) < 0:
            return None
        return [read_reply(stream) for _ in range(int(rest))]
    raise RuntimeError(f"redis: unexpected reply {line!r}")
