#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# `cpack -G DEB` makes the package: dpkg-deb lists its contents (printed, and checked against
# the files that must be there), its Depends name the package of every shared library the
# binaries link, the configuration is a conffile in /etc/nexus, the unit is
# docs/nexusd.service, and the packaged nexusd runs.
. "$(dirname "$0")/lib.sh"

out=$work/out
if ! "${CPACK:-cpack}" -G DEB --config "$NEXUS_BUILD_DIR/CPackConfig.cmake" -B "$out" >"$work/cpack.log" 2>&1; then
    cat "$work/cpack.log" >&2
    find "$out" -name '*.log' -exec tail -n 20 {} \; >&2
    fail "cpack -G DEB failed"
    finish
fi
deb=$(find "$out" -maxdepth 1 -name 'nexus_*.deb')
[ -n "$deb" ] && [ "$(wc -l <<<"$deb")" = 1 ] || { fail "cpack made no single nexus_*.deb: $(ls "$out")"; finish; }
ok "cpack: $(basename "$deb") ($(stat -c %s "$deb") bytes)"

echo "dpkg-deb -c $(basename "$deb"):"
dpkg-deb -c "$deb" | tee "$work/contents" | sed 's/^/  /'
for f in usr/bin/nexusd usr/bin/nexusctl usr/bin/nexus-bench etc/nexus/nexusd.conf \
    usr/lib/systemd/system/nexusd.service usr/share/man/man8/nexusd.8 usr/share/man/man1/nexusctl.1 \
    usr/share/bash-completion/completions/nexusd usr/share/bash-completion/completions/nexusctl \
    usr/share/doc/nexus/README.md usr/share/doc/nexus/docs/OPERATIONS.md \
    usr/share/doc/nexus/seccomp-nexusd.json; do
    grep -q " \./$f\$" "$work/contents" || fail "the package lacks /$f"
done
grep -q ' \./usr/etc' "$work/contents" && fail "the package has a /usr/etc"
notroot=$(awk '$2 != "root/root"' "$work/contents")
[ -z "$notroot" ] || fail "entries not owned by root/root: $notroot"
ok "contents: binaries, unit, configuration, man pages, completions, docs"

control=$(dpkg-deb -f "$deb")
echo "control:"
sed 's/^/  /' <<<"$control"
depends=$(dpkg-deb -f "$deb" Depends)
[ "$(dpkg-deb -f "$deb" Package)" = nexus ] || fail "Package is not nexus"
dpkg-deb -x "$deb" "$work/root"
# The package that owns a file (dpkg knows it by one of its names: /lib or /usr/lib).
owner() {
    local p out
    for p in "$1" "$(readlink -f "$1")" "/usr$1" "${1#/usr}"; do
        out=$(dpkg -S "$p" 2>/dev/null) || continue
        sed -n '1s/:.*//p' <<<"$out"
        return 0
    done
}
# Every shared library a binary needs is provided by a package named in Depends.
libs=$(ldconfig -p)
for bin in "$work"/root/usr/bin/*; do
    for lib in $(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
        path=$(awk -v l="$lib" '$1 == l { print $NF; exit }' <<<"$libs")
        pkg=$(owner "$path")
        if [ -z "$pkg" ]; then
            fail "$(basename "$bin"): no package owns $lib ($path)"
        elif ! grep -Eq "(^|, )$pkg( |,|$)" <<<"$depends"; then
            fail "$(basename "$bin") needs $lib from $pkg, not in Depends: $depends"
        fi
    done
done
for pkg in liburing2 libprotobuf-c1 libxxhash0 libjansson4 libsodium23 libssl3; do
    grep -Eq "(^|, )$pkg( |,|$)" <<<"$depends" || fail "Depends lacks $pkg"
done
ok "Depends: $depends"

conffiles=$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles 2>/dev/null) || true
[ "$conffiles" = /etc/nexus/nexusd.conf ] && ok "conffiles: $conffiles" || fail "conffiles: '$conffiles'"
cmp -s "$NEXUS_SOURCE_DIR/docs/nexusd.service" "$work/root/usr/lib/systemd/system/nexusd.service" &&
    ok "the packaged unit is docs/nexusd.service" || fail "the packaged unit differs from docs/nexusd.service"
v=$("$work/root/usr/bin/nexusd" --version 2>&1) || true
[ "$v" = "nexusd $(dpkg-deb -f "$deb" Version)" ] && ok "the packaged nexusd runs: $v" ||
    fail "packaged nexusd --version: '$v', package version $(dpkg-deb -f "$deb" Version)"
finish
