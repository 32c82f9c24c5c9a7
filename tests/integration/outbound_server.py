#!/usr/bin/env python3
# A small HTTP(S) server for the outbound policy tests, counting every request it gets:
#   redirect   answers /v2/ like a registry and everything else with a 307 to --to + the path;
#   challenge  answers everything with a 401 whose Bearer challenge names --realm;
#   record     serves a token for */token, a registry's 404 (with words of its own in the body,
#              which a redacted message must not repeat) for /v2/*, and a file for anything else.
import argparse
import json
import os
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = "SECRET-UPSTREAM-TEXT"
FILE_BODY = b"#!/bin/sh\necho k3s\n"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["redirect", "challenge", "record"], required=True)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--to", default="")
    parser.add_argument("--realm", default="")
    parser.add_argument("--cert", default="")
    parser.add_argument("--key", default="")
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--count-file", required=True)
    args = parser.parse_args()

    lock = threading.Lock()
    seen = [0]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *a):  # keep the test output quiet
            pass

        def reply(self, status, body, headers=()):
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            if not isinstance(body, bytes):
                self.send_header("Content-Type", "application/json")
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def handle_any(self):
            with lock:
                seen[0] += 1
                # The test reads how many requests arrived: a refused fetch leaves it at zero.
                with open(args.count_file + ".tmp", "w") as f:
                    f.write(str(seen[0]))
                os.rename(args.count_file + ".tmp", args.count_file)
            error = {"errors": [{"code": "MANIFEST_UNKNOWN", "message": SECRET}]}
            if args.mode == "redirect":
                if self.path == "/v2/":
                    return self.reply(200, {})
                return self.reply(307, b"", [("Location", args.to + self.path)])
            if args.mode == "challenge":
                challenge = f'Bearer realm="{args.realm}",service="pok8s-test"'
                unauthorized = {"errors": [{"code": "UNAUTHORIZED", "message": SECRET}]}
                return self.reply(401, unauthorized, [("WWW-Authenticate", challenge)])
            if self.path.split("?")[0].endswith("/token"):
                return self.reply(200, {"token": "pok8s-test-token", "expires_in": 300})
            if self.path == "/v2/":
                return self.reply(200, {})
            if self.path.startswith("/v2/"):
                return self.reply(404, error)
            return self.reply(200, FILE_BODY)

        do_GET = handle_any
        do_HEAD = handle_any

    server = ThreadingHTTPServer((args.bind, 0), Handler)
    if args.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(tmp, args.port_file)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
