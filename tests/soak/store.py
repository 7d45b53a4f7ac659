"""The shared key-value store as the soak sees it: the one redis-server every node uses,
with the deployment's keys under its `store_prefix`. Every call is retried while
redis-server is being restarted by the chaos driver."""

import json
import time

# How long a call waits for redis-server to come back.
RETRY_FOR_S = 60
LEASE_KEY = "lease/rotation"


class Store:
    def __init__(self, redis, prefix=""):
        self.redis = redis
        self.prefix = prefix

    def retried(self, call):
        deadline = time.monotonic() + RETRY_FOR_S
        while True:
            try:
                return call()
            except (OSError, RuntimeError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def get(self, key):
        return self.retried(lambda: self.redis.command("GET", self.prefix + key))

    def get_json(self, key):
        """The document under `key`, or None when there is none or it is not JSON."""
        text = self.get(key)
        try:
            return json.loads(text) if text is not None else None
        except ValueError:
            return None

    def put(self, key, document):
        self.retried(lambda: self.redis.command("SET", self.prefix + key, json.dumps(document)))

    def replace(self, key, expected, document):
        """Writes `document` under `key` only if it still holds `expected` (text, or None
        for absent), as one Redis transaction (WATCH, MULTI, EXEC); whether it did."""

        def transaction():
            with self.redis.session() as send:
                send("WATCH", self.prefix + key)
                if send("GET", self.prefix + key) != expected:
                    send("UNWATCH")
                    return False
                send("MULTI")
                send("SET", self.prefix + key, json.dumps(document))
                return send("EXEC") is not None

        return self.retried(transaction)

    def contents(self):
        return self.retried(self.redis.contents)
