#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Generates nexus/_proto/{common,nexus}_pb2.py from proto/*.proto, or checks that the committed
ones match (--check). The package ships the generated code so that nothing runs protoc at run
time; this script is how it is made, and the test suite runs it with --check so that a change
to proto/ without regenerating fails.

protoc writes `import common_pb2` (the .proto files import each other by bare name); inside the
package that must be a relative import, and the classes' module is the package path. Both
rewrites are done here, the same way every time, so a check is a plain comparison.

Usage: gen_proto.py [--check] [--protoc PROTOC] [--proto-dir DIR]
Exit status: 0 (written, or up to date), 1 (--check: they differ; the diff is printed),
2 (protoc missing or failing).
"""

import argparse
import ast
import difflib
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, "nexus", "_proto")
DEFAULT_PROTO_DIR = os.path.join(os.path.dirname(os.path.dirname(HERE)), "proto")
MODULES = ("common", "nexus")
PACKAGE = "nexus._proto"


def fix(name, text):
    """The package-relative form of protoc's output for module `name`."""
    for dep in MODULES:
        text = text.replace("\nimport %s_pb2 as %s__pb2\n" % (dep, dep),
                            "\nfrom . import %s_pb2 as %s__pb2\n" % (dep, dep))
    return text.replace("'%s_pb2', globals()" % name, "'%s.%s_pb2', globals()" % (PACKAGE, name))


def descriptor_bytes(text):
    """The serialized FileDescriptorProto a generated module registers (None if not found):
    what matters when two protoc versions format the same schema differently."""
    m = re.search(r"AddSerializedFile\((b'(?:[^'\\]|\\.)*')\)", text)
    return ast.literal_eval(m.group(1)) if m else None


def generate(protoc, proto_dir):
    """Runs protoc; returns {file name: fixed text}."""
    sources = [os.path.join(proto_dir, m + ".proto") for m in MODULES]
    with tempfile.TemporaryDirectory(prefix="nexus-pb2-") as tmp:
        cmd = [protoc, "-I", proto_dir, "--python_out=" + tmp] + sources
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except FileNotFoundError:
            print("gen_proto: %s not found (Debian: apt-get install protobuf-compiler)" % protoc,
                  file=sys.stderr)
            sys.exit(2)
        if res.returncode != 0:
            print("gen_proto: protoc failed:\n" + res.stderr, file=sys.stderr)
            sys.exit(2)
        out = {}
        for m in MODULES:
            with open(os.path.join(tmp, m + "_pb2.py"), encoding="utf-8") as f:
                out[m + "_pb2.py"] = fix(m, f.read())
        return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="compare with the committed files instead of writing them")
    ap.add_argument("--protoc", default="protoc")
    ap.add_argument("--proto-dir", default=DEFAULT_PROTO_DIR)
    args = ap.parse_args()
    files = generate(args.protoc, args.proto_dir)
    stale = 0
    for name, text in sorted(files.items()):
        path = os.path.join(OUT_DIR, name)
        try:
            with open(path, encoding="utf-8") as f:
                have = f.read()
        except FileNotFoundError:
            have = ""
        if have == text:
            continue
        if args.check and descriptor_bytes(have) == descriptor_bytes(text) is not None:
            print("gen_proto: %s: same schema, other protoc formatting" % name)
            continue
        if args.check:
            stale += 1
            diff = difflib.unified_diff(have.splitlines(True), text.splitlines(True),
                                        "committed/" + name, "regenerated/" + name)
            for line in list(diff)[:200]:  # the descriptor is one long line: cut it
                sys.stdout.write(line if len(line) <= 160 else line[:150] + " [...]\n")
        else:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            print("gen_proto: wrote " + os.path.relpath(path, HERE))
    if stale:
        print("gen_proto: %d generated file(s) differ from proto/: run client/python/gen_proto.py"
              % stale, file=sys.stderr)
        return 1
    if args.check:
        print("gen_proto: nexus/_proto is up to date with %s" % args.proto_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
