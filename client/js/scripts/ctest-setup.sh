#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
#
# ctest's js/setup (cmake/js_client.cmake): copies client/js and examples/web into the build
# directory (WORK/client/js, WORK/examples/web: the same relative layout, so the example's
# file:../../client/js dependency resolves there too), installs their npm packages from
# package-lock.json (`npm ci --offline`, from npm's cache; `npm ci` from the registry when the
# cache lacks them; skipped when node_modules already matches the lock), then builds the client
# (tsc) and the page (type check, esbuild). The source tree is left as it is.
#
# Usage: ctest-setup.sh SOURCE_DIR WORK_DIR
set -eu
src=$1
work=$2

# WORK/$1 becomes a copy of SOURCE/$1 without node_modules, dist and artifacts (node_modules
# of an earlier run is kept, as the install below decides).
mirror() {
    mkdir -p "$work/$1"
    find "$work/$1" -mindepth 1 -maxdepth 1 ! -name node_modules -exec rm -rf {} +
    (cd "$src/$1" && tar --exclude=./node_modules --exclude=./dist --exclude=./artifacts -cf - .) |
        (cd "$work/$1" && tar -xf -)
}

install() {
    cd "$work/$1"
    if ! cmp -s package-lock.json node_modules/.nexus-installed-lock 2>/dev/null; then
        npm ci --offline --no-audit --no-fund --loglevel=error ||
            npm ci --no-audit --no-fund --loglevel=error
        cp package-lock.json node_modules/.nexus-installed-lock
    fi
}

mirror client/js
mirror examples/web
(install client/js && npm run --silent build)
(install examples/web && npm run --silent typecheck && npm run --silent build)
echo "js/setup: client and page built in $work"
