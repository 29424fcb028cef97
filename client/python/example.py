#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Example of the Python client: subscribe, emit, receive, make a request, see an error.

Against a broker started with the built-in test handlers (`nexusd --test-handlers`, or
`./dev run --test-handlers`):

    python3 client/python/example.py --port 7400

It uses the package next to it (client/python/nexus; `pip install ./client/python` installs
it), whose protobuf code is generated ahead of time: nothing runs protoc. Then:
  1. says hello and prints the welcome,
  2. subscribes to demo:*:v1:* in the campaign,
  3. emits demo:note:v1:completed with a nested payload and prints the acknowledgement,
  4. receives that event through the subscription and checks that it is the one emitted,
  5. sends a test:echo:v1 request and prints its lifecycle (the echo returns the payload),
  6. emits an invalid event type and prints the broker's error.
Exit status 0 when every step did what the protocol promises, 1 otherwise (with the reason on
stderr).
"""

import argparse
import json
import os
import sys

sys.dont_write_bytecode = True  # keep the source tree clean (no __pycache__ next to us)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nexus  # noqa: E402  (after the path set-up above)


def show(data):
    return json.dumps(data, sort_keys=True)


def check(cond, what):
    if not cond:
        print("example: check failed: " + what, file=sys.stderr)
        sys.exit(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=7400)
    ap.add_argument("--user", default=None,
                    help="account of a broker with --accounts (default $NEXUS_USER)")
    ap.add_argument("--token", default=None,
                    help="its token (default $NEXUS_TOKEN, which keeps it out of ps)")
    ap.add_argument("--tls", action="store_true",
                    help="TLS, verified against the system CA store (or --tls-ca)")
    ap.add_argument("--tls-ca", default=None, help="CA file (PEM) for the broker's certificate")
    ap.add_argument("--tls-server-name", default=None,
                    help="name the certificate must carry (default: --host)")
    ap.add_argument("--campaign", type=int, default=42)
    args = ap.parse_args()

    try:
        client = nexus.connect((args.host, args.port), token=args.token, name="python-example",
                               user=args.user, tls=True if args.tls else None,
                               ca_file=args.tls_ca, server_hostname=args.tls_server_name,
                               reconnect=False)
    except nexus.AuthError as exc:
        print("example: the broker refused the login: %s" % exc, file=sys.stderr)
        return 1
    except OSError as exc:
        print("example: cannot connect to %s:%d: %s" % (args.host, args.port, exc),
              file=sys.stderr)
        return 1
    with client as c:
        w = c.welcome
        print("welcome: server=%s protocol=%d shards=%d max_frame_bytes=%d" %
              (w.server_version, w.protocol_version, w.shard_count, w.max_frame_bytes))

        sub = c.subscribe(["demo:*:v1:*"], campaign=args.campaign)
        print("subscribed: id=%d campaign=%d patterns=demo:*:v1:*" % (sub.id, args.campaign))

        note = {"text": "hello from python", "n": 3, "ratio": 0.25,
                "tags": ["a", "b"], "nested": {"ok": True, "nothing": None}}
        # A broker with accounts only accepts the logged-in account as user_id.
        ack = c.emit("demo:note:v1:completed", note, campaign=args.campaign,
                     user_id=c.user or "py-user", tags=["example"])
        print("ack: event_id=%s sequence=%d message=%s" %
              (ack.event_id, ack.sequence, ack.message))
        check(ack.success and ack.message == "accepted", "emit acknowledged as accepted")

        ev = sub.next(timeout=5.0)
        check(isinstance(ev, nexus.Event), "the subscription delivered the event")
        data = ev.data
        print("event: %s sequence=%d user=%s data=%s" %
              (ev.event_type, ev.sequence, ev.user_id, show(data)))
        check(ev.event_id == ack.event_id and ev.sequence == ack.sequence,
              "the delivered event is the acknowledged one")
        check(data == note, "the payload came back unchanged")

        question = {"question": "ping", "n": 42, "list": [1, "two", False]}
        req = c.request("test:echo:v1", question, campaign=args.campaign)
        print("request: %s acknowledged, event_id=%s" % (req.ack.event_type, req.id))
        for step in req:
            line = "request: %s" % step.event_type
            if step.has_payload:
                line += " data=%s" % show(step.data)
            print(line)
        terminal = req.terminal
        check(terminal is not None and terminal.event_type == "test:echo:v1:success",
              "the request ended with success")
        check(terminal.data == question, "the echo returned the request's payload")

        try:
            c.emit("Demo:bad:v1:completed", campaign=args.campaign)
            check(False, "an invalid event type is refused")
        except nexus.NexusError as exc:
            print("error: %s: %s" % (exc.code, exc.message))
            check(exc.code == "invalid_event_type", "the error code is invalid_event_type")

        check(c.ping() > 0, "the connection still works after the error")
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
