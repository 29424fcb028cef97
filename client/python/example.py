#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Example of the Python client: subscribe, emit, receive, make a request, see an error.

Against a broker started with the built-in test handlers (`nexusd --test-handlers`, or
`./dev run --test-handlers`):

    python3 client/python/example.py --port 7400

It generates the protobuf code from proto/ into --proto-out (default: a fresh temporary
folder) with protoc, then:
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
import atexit
import json
import os
import shutil
import sys
import tempfile

sys.dont_write_bytecode = True  # keep the source tree clean (no __pycache__ next to us)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nexus_client  # noqa: E402  (after the path set-up above)


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
    ap.add_argument("--proto-out", default=None,
                    help="folder for the generated *_pb2.py (default: a temporary folder)")
    args = ap.parse_args()

    out = args.proto_out
    if not out:
        out = tempfile.mkdtemp(prefix="nexus-pb2-")
        atexit.register(shutil.rmtree, out, ignore_errors=True)
    pb = nexus_client.load_protos(out)

    try:
        client = nexus_client.Client(pb, args.host, args.port, token=args.token,
                                     name="python-example", user=args.user,
                                     tls=True if args.tls else None, ca_file=args.tls_ca,
                                     server_hostname=args.tls_server_name)
    except nexus_client.AuthError as exc:
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

        sub = c.subscribe(["demo:*:v1:*"], campaign_id=args.campaign)
        print("subscribed: id=%d campaign=%d patterns=demo:*:v1:*" % (sub, args.campaign))

        note = {"text": "hello from python", "n": 3, "ratio": 0.25,
                "tags": ["a", "b"], "nested": {"ok": True, "nothing": None}}
        # A broker with accounts only accepts the logged-in account as user_id.
        ack = c.emit("demo:note:v1:completed", args.campaign, data=note,
                     user_id=c.user or "py-user",
                     tags=["example"])
        print("ack: event_id=%s sequence=%d message=%s" %
              (ack.event_id, ack.sequence, ack.message))
        check(ack.success and ack.message == "accepted", "emit acknowledged as accepted")

        ev = c.next_event(timeout=5.0)
        check(ev is not None, "the subscription delivered the event")
        data = nexus_client.struct_to_python(ev.payload.data)
        print("event: %s sequence=%d user=%s data=%s" %
              (ev.event_type, ev.sequence, ev.metadata.global_context.user_id, show(data)))
        check(ev.event_id == ack.event_id and ev.sequence == ack.sequence,
              "the delivered event is the acknowledged one")
        check(data == note, "the payload came back unchanged")

        question = {"question": "ping", "n": 42, "list": [1, "two", False]}
        terminal = None
        for step in c.request("test:echo:v1", args.campaign, data=question):
            state = step.event_type.rsplit(":", 1)[-1]
            if state == "requested":
                print("request: %s acknowledged, event_id=%s" % (step.event_type, step.event_id))
                continue
            line = "request: %s" % step.event_type
            if step.HasField("payload"):
                line += " data=%s" % show(nexus_client.struct_to_python(step.payload.data))
            print(line)
            terminal = step
        check(terminal is not None and terminal.event_type == "test:echo:v1:success",
              "the request ended with success")
        check(nexus_client.struct_to_python(terminal.payload.data) == question,
              "the echo returned the request's payload")

        try:
            c.emit("Demo:bad:v1:completed", args.campaign)
            check(False, "an invalid event type is refused")
        except nexus_client.NexusError as exc:
            print("error: %s: %s" % (exc.code, exc.message))
            check(exc.code == "invalid_event_type", "the error code is invalid_event_type")

        check(c.ping(7) == 7, "the connection still works after the error")
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
