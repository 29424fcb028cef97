#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# tests/golden/golden_test.sh GOLDEN_TOOL SOURCE_DIR: wire compatibility of the hand-written
# codec with protoc, which stands in for the ancestor's generated code. Nothing here trusts the
# codec's own encoder to check its decoder, or the reverse:
#   (a) decode: each tests/golden/NAME.txtpb (a text-format nexus.v1.Frame in the ancestor's
#       layout) is encoded by `protoc --encode`, decoded by `golden_tool decode-frame`, and the
#       output compared with NAME.expected, written by hand from the .txtpb. The opaque metadata
#       and payload bytes in it (@HEX:metadata@, @LEN:payload@, ...) are derived by protoc
#       encoding that sub-message of the .txtpb alone.
#   (b) encode: frames written by the codec's encoders are decoded by `protoc --decode` and
#       compared with encode_NAME.expected, written by hand from the contract (docs/DESIGN.md §5); then
#       protoc re-encodes its reading, which must give back our bytes exactly (field order,
#       omitted defaults, varint forms). encode-event splices the metadata and payload of the
#       protoc-encoded emit of (a).
#   (c) a too-long error message is cut on a UTF-8 boundary: protoc refuses invalid UTF-8 in a
#       proto3 string, so it must parse, and the message must be whole euro signs.
# Prints one line per case; exits 1 on any mismatch (with a diff), 2 on bad usage.
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 GOLDEN_TOOL SOURCE_DIR" >&2
    exit 2
fi
tool=$1
src=$2
golden=$src/tests/golden
if ! command -v protoc >/dev/null 2>&1; then
    echo "golden: protoc is required (apt-get install protobuf-compiler)" >&2
    exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

proto_args=(-I "$src/proto")
if [ -f /usr/include/google/protobuf/struct.proto ]; then
    proto_args+=(-I /usr/include)
fi
proto_args+=("$src/proto/nexus.proto" "$src/proto/common.proto")

# The welcome frame names the server version, which CMakeLists.txt defines.
version=$(sed -n 's/^project(nexus VERSION \([0-9][0-9.]*\).*/\1/p' "$src/CMakeLists.txt")
if [ -z "$version" ]; then
    echo "golden: cannot read the project version from $src/CMakeLists.txt" >&2
    exit 1
fi

failures=0
pass() { echo "ok   $1"; }
fail() {
    echo "FAIL $1: $2"
    failures=$((failures + 1))
}

# compare NAME WANT GOT: diff, and count a mismatch.
compare() {
    if diff -u "$2" "$3" >"$tmp/diff"; then
        pass "$1"
    else
        fail "$1" "output differs from the expected (- expected, + got)"
        cat "$tmp/diff"
    fi
}

# sub_block FILE NAME: the lines inside "  NAME {" ... "  }" (a field of the frame body, which
# the .txtpb files indent by two spaces).
sub_block() {
    awk -v open="  $2 {" '$0 == open { on = 1; next } on && $0 == "  }" { exit } on { print }' "$1"
}

message_type() {
    case $1 in
    metadata) echo common.Metadata ;;
    payload) echo common.Payload ;;
    *) return 1 ;;
    esac
}

# fill_expected EXPECTED TXTPB OUT: replaces @HEX:NAME@ and @LEN:NAME@ with the hex and length of
# protoc's encoding of the sub-message NAME of TXTPB.
fill_expected() {
    cp "$1" "$3"
    local name
    for name in metadata payload; do
        grep -q "@\(HEX\|LEN\):$name@" "$1" || continue
        if ! grep -qx "  $name {" "$2"; then
            echo "golden: $2 has no '  $name {' block for $1" >&2
            return 1
        fi
        sub_block "$2" "$name" >"$tmp/sub.txt"
        protoc --encode="$(message_type "$name")" "${proto_args[@]}" <"$tmp/sub.txt" \
            >"$tmp/sub.bin"
        local hex len
        hex=$(od -An -v -tx1 "$tmp/sub.bin" | tr -d ' \n')
        len=$(wc -c <"$tmp/sub.bin" | tr -d ' ')
        sed -i -e "s/@HEX:$name@/$hex/" -e "s/@LEN:$name@/$len/" "$3"
    done
}

# ---- (a) protoc encodes, the codec decodes ---------------------------------------------------
for txt in "$golden"/*.txtpb; do
    name=$(basename "$txt" .txtpb)
    case_name="decode/$name"
    if [ ! -f "$golden/$name.expected" ]; then
        fail "$case_name" "no $name.expected"
        continue
    fi
    if ! protoc --encode=nexus.v1.Frame "${proto_args[@]}" <"$txt" >"$tmp/$name.bin"; then
        fail "$case_name" "protoc cannot encode $txt"
        continue
    fi
    if ! fill_expected "$golden/$name.expected" "$txt" "$tmp/$name.want"; then
        fail "$case_name" "cannot derive the expected bytes"
        continue
    fi
    if ! "$tool" decode-frame "$tmp/$name.bin" >"$tmp/$name.got"; then
        fail "$case_name" "golden_tool decode-frame failed"
        cat "$tmp/$name.got"
        continue
    fi
    compare "$case_name" "$tmp/$name.want" "$tmp/$name.got"
done

# ---- (b) the codec encodes, protoc decodes ---------------------------------------------------
# encode_case NAME TOOL_ARGS...: golden_tool TOOL_ARGS > frame; protoc --decode; compare with
# encode_NAME.expected; protoc --encode of that reading must equal our frame.
encode_case() {
    local name=$1
    shift
    local case_name="encode/$name"
    local bin="$tmp/enc_$name.bin"
    if ! "$tool" "$@" >"$bin"; then
        fail "$case_name" "golden_tool $1 failed"
        return
    fi
    if ! protoc --decode=nexus.v1.Frame "${proto_args[@]}" <"$bin" >"$tmp/enc_$name.txt"; then
        fail "$case_name" "protoc cannot decode our frame"
        return
    fi
    sed "s/@NEXUS_VERSION@/$version/" "$golden/encode_$name.expected" >"$tmp/enc_$name.want"
    compare "$case_name" "$tmp/enc_$name.want" "$tmp/enc_$name.txt"
    protoc --encode=nexus.v1.Frame "${proto_args[@]}" <"$tmp/enc_$name.txt" >"$tmp/enc_$name.re"
    if cmp -s "$bin" "$tmp/enc_$name.re"; then
        pass "$case_name/canonical-bytes"
    else
        fail "$case_name/canonical-bytes" "protoc writes these fields differently"
        od -An -tx1 "$bin"
        od -An -tx1 "$tmp/enc_$name.re"
    fi
}

encode_case event encode-event "$tmp/emit.bin" 77 1700000000123456789
encode_case event_minimal encode-event "$tmp/emit_minimal.bin" 1 5
encode_case emit_ack encode-emit-ack 9 evt-1 orders:create:v1:requested -2 7 accepted
encode_case welcome encode-welcome 1 4 1048576 99 2
encode_case error encode-error 5 frame_too_large \
    "frame of 2000000 bytes exceeds max_frame_bytes 1048576"
encode_case gap encode-gap -3 10 19 10 slow_consumer
encode_case subscribe_ack encode-subscribe-ack 7 12345678901
encode_case unsubscribe encode-unsubscribe 8 3
encode_case ping encode-ping 18446744073709551615 1
encode_case pong encode-pong 11 3735928559
encode_case hello encode-hello 1 1 s3cr3t-token nexusctl/0.1
encode_case stats encode-stats 12
encode_case subscribe encode-subscribe 7 1001 user-42 'orders:*' 'chat:message:v1:*' '*'
encode_case emit encode-emit 0 evt-9 chat:message:v1:requested room-1 -7 user-42 req-0001

# Every encode_*.expected has its case above.
for exp in "$golden"/encode_*.expected; do
    name=$(basename "$exp" .expected)
    name=${name#encode_}
    [ -f "$tmp/enc_$name.bin" ] || fail "encode/$name" "encode_$name.expected has no case"
done

# ---- (c) a long error message, cut on a UTF-8 boundary ----------------------------------------
case_name="encode/error_truncated_utf8"
if ! "$tool" encode-error-repeat 1 limit_exceeded '€' 1000 >"$tmp/long.bin"; then
    fail "$case_name" "golden_tool encode-error-repeat failed"
elif [ "$(wc -c <"$tmp/long.bin")" -gt 508 ]; then
    fail "$case_name" "frame of $(wc -c <"$tmp/long.bin") bytes exceeds CODEC_CONTROL_BYTES_MAX"
elif ! protoc --decode=nexus.v1.Frame "${proto_args[@]}" <"$tmp/long.bin" >"$tmp/long.txt" \
    2>"$tmp/long.err"; then
    fail "$case_name" "protoc rejects the frame: $(head -1 "$tmp/long.err")"
else
    # Line 4 holds the message: whole 3-byte sequences only, at least 100 of them.
    euros='  message: "(\\342\\202\\254){100,}"'
    if [ "$(sed -n 1,3p "$tmp/long.txt")" = $'correlation: 1\nerror {\n  code: "limit_exceeded"' ] &&
        sed -n 4p "$tmp/long.txt" | grep -Eqx "$euros" &&
        [ "$(sed -n '5,$p' "$tmp/long.txt")" = "}" ]; then
        pass "$case_name"
    else
        fail "$case_name" "unexpected protoc reading"
        cut -c1-200 "$tmp/long.txt"
    fi
fi

if [ "$failures" -ne 0 ]; then
    echo "golden: $failures case(s) failed"
    exit 1
fi
echo "golden: all cases passed"
