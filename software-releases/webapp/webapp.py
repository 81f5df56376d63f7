"""
webapp: a small web application that counts its visits in Redis.

    usage: python3 webapp.py CONFIG_FILE

CONFIG_FILE is a JSON object: listen {ip, port}, greeting, redis {host, port, password}.

    GET /        200, "<greeting>: visit N", N the value of INCR visits in Redis
                 503 when Redis cannot be reached or refuses the command
    GET /health  200, "ok" (the server answers; Redis is not asked)
    other paths  404; other methods 405

Redis is spoken to directly in RESP over a socket, one connection per visit (AUTH,
then INCR), with a bounded time: the standard library is all it needs. Requests are
served by a thread each; one line per request goes to the standard error (the
service's log). SIGTERM stops it.
"""

import json
import signal
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REDIS_TIMEOUT_SECONDS = 2.0
REPLY_LINE_MAX = 64 * 1024


class RedisError(Exception):
    """Redis could not be reached, or answered with an error."""


def encode_command(*words):
    """A command as RESP: an array of bulk strings, safe whatever bytes the words hold."""
    parts = [b"*%d\r\n" % len(words)]
    for word in words:
        data = word.encode("utf-8") if isinstance(word, str) else word
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def read_reply(stream):
    """Reads one simple reply (+status, -error or :integer) and returns it as bytes or int."""
    line = stream.readline(REPLY_LINE_MAX)
    if not line.endswith(b"\r\n"):
        raise RedisError("the connection to Redis ended in the middle of a reply")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body
    if kind == b"-":
        raise RedisError("Redis answered: " + body.decode("utf-8", "replace"))
    if kind == b":":
        return int(body)
    raise RedisError("unexpected reply from Redis: " + repr(line[:40]))


def count_visit(redis):
    """INCR visits, after AUTH when the server has a password; returns the new count."""
    try:
        with socket.create_connection((redis["host"], int(redis["port"])), timeout=REDIS_TIMEOUT_SECONDS) as connection:
            stream = connection.makefile("rb")
            commands = []
            if redis.get("password"):
                commands.append(encode_command("AUTH", redis["password"]))
            commands.append(encode_command("INCR", "visits"))
            # Both at once: Redis answers them in order.
            connection.sendall(b"".join(commands))
            reply = None
            for _ in commands:
                reply = read_reply(stream)
            if not isinstance(reply, int):
                raise RedisError("INCR did not answer an integer")
            return reply
    except OSError as error:
        raise RedisError("cannot reach Redis at %s:%s: %s" % (redis["host"], redis["port"], error)) from error


def make_handler(config):
    greeting = config["greeting"]
    redis = config["redis"]

    class Handler(BaseHTTPRequestHandler):
        server_version = "webapp"
        sys_version = ""
        # Bounded time for a client to send its request: a silent client holds one thread at most this long.
        timeout = 10

        def answer(self, status, text, head_only=False):
            body = (text + "\n").encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            if status == 405:
                self.send_header("Allow", "GET")
            self.end_headers()
            if not head_only:
                self.wfile.write(body)

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if path == "/":
                try:
                    visits = count_visit(redis)
                except RedisError as error:
                    self.log_message("%s", error)
                    self.answer(503, "the visit counter is unavailable")
                    return
                self.answer(200, "%s: visit %d" % (greeting, visits))
            elif path == "/health":
                self.answer(200, "ok")
            else:
                self.answer(404, "not found")

        def do_HEAD(self):
            self.answer(405, "method not allowed", head_only=True)

        def do_POST(self):
            self.answer(405, "method not allowed")

        do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_POST

    return Handler


def main(argv):
    if len(argv) != 2:
        print("usage: webapp.py CONFIG_FILE", file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as file:
        config = json.load(file)
    server = ThreadingHTTPServer((config["listen"]["ip"], int(config["listen"]["port"])), make_handler(config))
    server.daemon_threads = True

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print("webapp: listening on %s port %s" % server.server_address, file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    print("webapp: stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
