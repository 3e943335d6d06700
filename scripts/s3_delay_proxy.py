"""A small HTTP proxy for scripts/bench-remote.sh: forwards every request to the local S3 server after
waiting DELAY_MS (a round trip to a remote region, added to each request), streams the answer
back, and counts requests. `GET /__stats` answers the counts as JSON (never forwarded).

    python3 scripts/s3_delay_proxy.py LISTEN_PORT UPSTREAM_PORT DELAY_MS

HTTP/1.1 with keep-alive on both sides, one thread per client connection, one upstream connection
per client connection: the client's connection pool is what decides how many requests overlap.
A body is moved socket to socket by the kernel (splice(2) through a pipe), never through Python:
the proxy stands for a network, which costs the client machine no CPU per byte. Copied through
Python, each byte cost the proxy about 0.4 CPU-s per GiB with one stream and twice that with three
at once (the GIL changing hands), CPU that a benchmark on 2 cores then took from whatever it measured.
"""

import fcntl
import http.client
import json
import os
import select
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LISTEN, UPSTREAM, DELAY = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]) / 1000.0
HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
STEP = 1 << 20
IDLE_S = 300  # the longest the upstream may leave a body unfinished

stats_lock = threading.Lock()
stats = {"requests": 0, "ranged_gets": 0, "whole_gets": 0, "lists": 0, "heads": 0, "other": 0, "bytes_out": 0}


def count(key, n=1):
    with stats_lock:
        stats[key] += n


class Proxy(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def upstream(self):
        if getattr(self, "conn", None) is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", UPSTREAM, timeout=300)
        return self.conn

    def forward(self):
        if self.path == "/__stats":
            with stats_lock:
                body = json.dumps(stats).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        count("requests")
        if self.command == "GET":
            count("ranged_gets" if self.headers.get("Range") else "lists" if "list-type" in self.path else "whole_gets")
        else:
            count("heads" if self.command == "HEAD" else "other")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        time.sleep(DELAY)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        try:
            conn = self.upstream()
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException):
            self.conn = None
            self.send_error(502)
            return
        self.send_response(resp.status, resp.reason)
        size = resp.getheader("Content-Length")
        payload = None
        if size is None and self.command != "HEAD":
            payload = resp.read()
            size = str(len(payload))
        for k, v in resp.getheaders():
            if k.lower() not in HOP and k.lower() != "content-length":
                self.send_header(k, v)
        if size is not None:
            self.send_header("Content-Length", size)
        self.end_headers()
        if self.command == "HEAD":
            resp.read()
            return
        if payload is not None:
            self.wfile.write(payload)
            count("bytes_out", len(payload))
            return
        self.relay(resp, int(size))

    def relay(self, resp, size):
        """The `size` bytes of `resp`'s body to the client: what http.client has read past the
        headers, then the rest spliced from the upstream socket to the client's."""
        buffered = resp.fp.peek(1)[:size] if size else b""
        if buffered:
            self.wfile.write(resp.fp.read(len(buffered)))
        left = size - len(buffered)
        if getattr(self, "pipe", None) is None:
            self.pipe = os.pipe()
            fcntl.fcntl(self.pipe[1], fcntl.F_SETPIPE_SZ, STEP)
        src, dst = resp.fp.fileno(), self.connection.fileno()  # the upstream socket: self.conn.sock is gone when the answer closes it
        r, w = self.pipe
        wait = select.poll()
        wait.register(src, select.POLLIN)
        while left:
            try:
                n = os.splice(src, w, min(left, STEP), flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
            except BlockingIOError:  # the upstream socket has a timeout, so it is non-blocking
                if not wait.poll(IDLE_S * 1000):
                    raise TimeoutError("the upstream stopped sending mid-body")
                continue
            if n == 0:
                raise ConnectionError("the upstream closed mid-body")
            left -= n
            while n:  # the client's socket blocks: this returns once the kernel took bytes
                n -= os.splice(r, dst, n, flags=os.SPLICE_F_MOVE)
        count("bytes_out", size)
        # The body was read past http.client: tell it so, so the connection takes the next request.
        resp.length = 0
        resp.read()

    def finish(self):
        super().finish()
        for fd in getattr(self, "pipe", None) or ():
            os.close(fd)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = forward


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


if __name__ == "__main__":
    Server(("127.0.0.1", LISTEN), Proxy).serve_forever()
