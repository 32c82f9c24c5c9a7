#!/usr/bin/env python3
# An HTTP proxy in front of the test registry that fails the first N requests (optionally only
# those whose path contains a string): with a 503, by closing the connection without an answer,
# or by cutting the body off halfway. Everything else is forwarded unchanged.
import argparse
import http.client
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade"}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", type=int, required=True)
    parser.add_argument("--failures", type=int, required=True)
    parser.add_argument("--mode", choices=["503", "drop", "truncate"], default="503")
    parser.add_argument("--path-contains", default="")
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--count-file", required=True)
    args = parser.parse_args()

    lock = threading.Lock()
    seen = [0]
    matched = [0]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *a):
            pass

        def forward(self):
            with lock:
                seen[0] += 1
                n = seen[0]
                # The test reads how many requests arrived, to see the retries happen.
                with open(args.count_file + ".tmp", "w") as f:
                    f.write(str(n))
                os.rename(args.count_file + ".tmp", args.count_file)
                if args.path_contains in self.path:
                    matched[0] += 1
                fail = args.path_contains in self.path and matched[0] <= args.failures
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            if fail and args.mode != "truncate":
                if args.mode == "drop":
                    self.close_connection = True
                    return
                data = json.dumps({"errors": [{"code": "UNAVAILABLE", "message": "try again later"}]}).encode()
                self.send_response(503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            upstream = http.client.HTTPConnection("127.0.0.1", args.upstream, timeout=60)
            upstream.request(self.command, self.path, body=body, headers=headers)
            resp = upstream.getresponse()
            data = resp.read()
            self.send_response(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() in HOP_BY_HOP or k.lower() in ("content-length", "date", "server"):
                    continue
                self.send_header(k, v)
            if self.command == "HEAD":
                self.send_header("Content-Length", resp.getheader("Content-Length", "0"))
            else:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                if fail and args.mode == "truncate":
                    # The full Content-Length was promised; half arrives, then the connection ends.
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                else:
                    self.wfile.write(data)
            upstream.close()

        do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = forward

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(tmp, args.port_file)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
