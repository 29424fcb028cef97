# SPDX-License-Identifier: Apache-2.0
# shellcheck shell=bash
#
# Shared by tests/packaging/*_test.sh (sourced). Environment from ctest (cmake/packaging.cmake):
# CMAKE, CPACK, NEXUSD, NEXUSCTL, NEXUS_SOURCE_DIR, NEXUS_BUILD_DIR, SECCOMP_EXEC. Gives each
# test a scratch directory $work (removed at exit), fail/ok/finish and an install into a prefix.
set -euo pipefail

name=$(basename "$0" _test.sh)
work=$(mktemp -d "${TMPDIR:-/tmp}/nexus-pkg-$name.XXXXXX")
cleanup_hooks=()
cleanup() {
    local h
    for h in "${cleanup_hooks[@]}"; do eval "$h" || true; done
    rm -rf "$work"
}
trap cleanup EXIT

failed=0
fail() {
    echo "FAIL: $*" >&2
    failed=1
}
ok() {
    echo "ok: $*"
}
# Ends the test: exit status 1 if any check failed.
finish() {
    if [ "$failed" -ne 0 ]; then
        echo "packaging/$name: FAILED" >&2
        exit 1
    fi
    echo "packaging/$name: passed"
}

# Installs the build tree under PREFIX (with DESTDIR when given as $2).
install_to() {
    local prefix=$1 destdir=${2:-}
    DESTDIR=$destdir "${CMAKE:-cmake}" --install "$NEXUS_BUILD_DIR" --prefix "$prefix" >"$work/install.log" 2>&1 ||
        { cat "$work/install.log" >&2; echo "FAIL: cmake --install --prefix $prefix" >&2; exit 1; }
}

# A TCP port free on loopback now.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
