#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
#
# Regenerates nexuspb/*.pb.go from proto/*.proto with Debian's protoc and protoc-gen-go
# (packages protobuf-compiler, protoc-gen-go). The .proto files carry no go_package option
# (other languages generate from them too): the M flags below say where each file goes.
#   client/go/generate.sh [OUT_DIR]     (default: this folder; nexuspb/ is written under it)
# nexuspb/gen_test.go runs it into a temporary folder and compares, so that a change to the
# .proto files without a regeneration fails `go test`.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here}
proto=$here/../../proto
mod=nexus/client/go
mkdir -p "$out"
# -I/usr/include: google/protobuf/struct.proto, from libprotobuf-dev; its Go code is
# google.golang.org/protobuf/types/known/structpb (its own go_package says so).
protoc -I"$proto" -I/usr/include --go_out="$out" --go_opt=module=$mod \
    --go_opt=Mnexus.proto=$mod/nexuspb --go_opt=Mcommon.proto=$mod/nexuspb \
    "$proto/nexus.proto" "$proto/common.proto"
