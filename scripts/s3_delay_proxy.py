"""A small HTTP proxy for scripts/bench-remote.sh: forwards every request to the local S3 server after
waiting DELAY_MS (a round trip to a remote region, added to each request), streams the answer
back, and counts requests. `GET /__stats` answers the counts as JSON (never forwarded).

    python3 scripts/s3_delay_proxy.py LISTEN_PORT UPSTREAM_PORT DELAY_MS

HTTP/1.1 with keep-alive on both sides, one thread per client connection, one upstream connection
per client connection: the client's connection pool is what decides how many requests overlap.
"""

import http.client
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LISTEN, UPSTREAM, DELAY = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]) / 1000.0
HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
STEP = 1 << 20

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
        while True:
            piece = resp.read(STEP)
            if not piece:
                break
            self.wfile.write(piece)
            count("bytes_out", len(piece))

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = forward


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


if __name__ == "__main__":
    Server(("127.0.0.1", LISTEN), Proxy).serve_forever()
