#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
#
# The Go client's check, run by the CMake test go/client (cmake/go_client.cmake): gofmt,
# go vet and go test (with the race detector unless NEXUS_GO_RACE=0) of this module and of
# each module under examples/go/. Offline: GOPROXY=off, google.golang.org/protobuf from
# Debian (README.md, "Building offline"). The tests start nexusd themselves: $NEXUSD, else
# build/release/nexusd. $GO names the go command (default: go on $PATH).
#   client/go/test.sh [go test flags...]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
go=${GO:-go}
gofmt="$("$go" env GOROOT)/bin/gofmt"
export GOPROXY=off GOFLAGS="${GOFLAGS:--mod=readonly}"
# CTest requires the code generation check's tools (nexuspb/gen_test.go).
export NEXUS_GO_REQUIRE_TOOLS="${NEXUS_GO_REQUIRE_TOOLS:-1}"
# The race detector (NEXUS_GO_RACE=1, the default) needs cgo and a C compiler.
race=""
if [ "${NEXUS_GO_RACE:-1}" = "1" ] && [ "$("$go" env CGO_ENABLED)" = "1" ] &&
    command -v "$("$go" env CC)" >/dev/null 2>&1; then
    race="-race"
fi
"$go" version
status=0
for dir in "$here" "$root"/examples/go/*/; do
    [ -f "$dir/go.mod" ] || continue
    echo "== $dir"
    cd "$dir"
    bad=$("$gofmt" -l .)
    if [ -n "$bad" ]; then
        echo "gofmt: not formatted (run gofmt -w): $bad"
        status=1
    fi
    "$go" vet ./... || status=1
    "$go" test $race -count=1 -timeout 240s "$@" ./... || status=1
done
exit $status
