#!/usr/bin/env python3
# A token server for the registry integration tests, after distribution's token authentication
# spec: checks HTTP Basic credentials and answers RS256 JWTs whose x5c header carries the
# self-signed certificate the registry trusts (its `rootcertbundle`).
import argparse
import base64
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--key", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--issuer", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--field", default="token", choices=["token", "access_token"])
    args = parser.parse_args()

    with open(args.key, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    with open(args.cert, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    cert_der = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
    expected = f"{args.user}:{args.password}"

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *a):  # keep the test output quiet
            pass

        def reply(self, status, body, extra=()):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in extra:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            url = urlparse(self.path)
            if url.path != "/token":
                return self.reply(404, {"errors": [{"code": "NOT_FOUND", "message": "no such path"}]})
            query = parse_qs(url.query)
            auth = self.headers.get("Authorization", "")
            given = ""
            if auth.startswith("Basic "):
                try:
                    given = base64.b64decode(auth[6:]).decode()
                except Exception:
                    given = ""
            if given != expected:
                return self.reply(
                    401,
                    {"errors": [{"code": "UNAUTHORIZED", "message": "invalid username or password"}]},
                    [("WWW-Authenticate", 'Basic realm="pok8s-test-token"')],
                )
            if query.get("service", [""])[0] != args.service:
                return self.reply(400, {"errors": [{"code": "DENIED", "message": "unknown service"}]})
            access = []
            for scope in query.get("scope", []):
                for item in scope.split(" "):
                    kind, _, rest = item.partition(":")
                    name, _, actions = rest.rpartition(":")
                    if kind and name:
                        access.append({"type": kind, "name": name, "actions": actions.split(",")})
            now = int(time.time())
            header = {"typ": "JWT", "alg": "RS256", "x5c": [cert_der]}
            claims = {
                "iss": args.issuer,
                "sub": args.user,
                "aud": args.service,
                "exp": now + 300,
                "nbf": now - 10,
                "iat": now,
                "jti": os.urandom(8).hex(),
                "access": access,
            }
            signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
            signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
            token = signing_input + "." + b64url(signature)
            self.reply(200, {args.field: token, "expires_in": 300})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(tmp, args.port_file)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
