#!/usr/bin/env python3
"""An HTTP proxy in front of moto that injects AWS faults, for the reliability tests.

    aws-fault-proxy.py --port PORT --upstream http://127.0.0.1:5055 --control FILE

Forwards every request to the upstream (moto) and relays its answer, unless the control file
(JSON, re-read on every request and every 50 ms; a missing file means "pass") names a fault:

    {"mode": "pass"}                      forward everything
    {"mode": "down"}                      stop listening: connections are refused (as when AWS,
                                          or the endpoint's network path, is gone)
    {"mode": "throttle"}                  400 ThrottlingException (Secrets Manager's answer)
    {"mode": "toomany"}                   429 TooManyRequestsException
    {"mode": "deny"}                      400 AccessDeniedException
    {"mode": "slow", "delay": 2.5}        forward after a delay (seconds)
    {"mode": "cut"}                       forward, then send the status line, the headers and
                                          half of the body, and close the connection

"match" (optional) limits a fault to Secrets Manager requests whose target or body contains
that text (e.g. a secret id): the others are forwarded. Faults only ever apply to Secrets
Manager calls (`X-Amz-Target: secretsmanager.*`); STS and moto's own API always pass.

Every request is logged on stdout as one line: `<operation> <fault or pass>` (the operation of
an STS call is its `Action`). The cost benchmark counts AWS calls from these lines.
"""

import argparse
import http.client
import http.server
import json
import os
import socketserver
import sys
import threading
import time
import urllib.parse

ERRORS = {
    "throttle": (400, "ThrottlingException", "Rate exceeded"),
    "toomany": (429, "TooManyRequestsException", "Too many requests"),
    "deny": (
        400,
        "AccessDeniedException",
        "User: arn:aws:sts::123456789012:assumed-role/dso-test/fault-proxy is not authorized "
        "to perform: secretsmanager:* on resource: * because no identity-based policy allows it",
    ),
}


def read_control(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {"mode": "pass"}


LOG = threading.Lock()  # one whole line per request, also from concurrent requests


def make_handler(upstream, control):
    up = urllib.parse.urlsplit(upstream)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection: "down" leaves none open

        def log_message(self, *args):  # the one line per request below is the log
            pass

        def handle_any(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            target = self.headers.get("X-Amz-Target") or ""
            operation = target.rsplit(".", 1)[-1] if target else self.command + " " + self.path
            if not target:  # query protocol (STS): the operation is the Action field
                form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
                operation = form.get("Action", [operation])[0]
            conf = read_control(control)
            mode = conf.get("mode", "pass")
            match = conf.get("match")
            applies = target.startswith("secretsmanager.") and (
                not match or match in target or match.encode() in body
            )
            fault = mode if applies and mode != "pass" else "pass"
            with LOG:
                print(f"{operation} {fault}", flush=True)
            if fault in ERRORS:
                status, code, message = ERRORS[fault]
                payload = json.dumps({"__type": code, "message": message}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("x-amzn-RequestId", "fault-proxy")
                self.end_headers()
                self.wfile.write(payload)
                return
            if fault == "slow":
                time.sleep(float(conf.get("delay", 2)))
            conn = http.client.HTTPConnection(up.hostname, up.port, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            conn.close()
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("connection", "content-length", "transfer-encoding", "server", "date"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if fault == "cut":
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = handle_any

    return Handler


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    allow_reuse_address = True
    daemon_threads = True


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--control", required=True)
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    args = ap.parse_args()
    handler = make_handler(args.upstream, args.control)
    server = None
    while True:
        down = read_control(args.control).get("mode") == "down"
        if down and server is not None:
            server.shutdown()
            server.server_close()
            server = None
            print("listener closed (down)", flush=True)
        elif not down and server is None:
            server = Server((args.host, args.port), handler)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            print(f"listening on {args.host}:{args.port}", flush=True)
        time.sleep(0.05)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
