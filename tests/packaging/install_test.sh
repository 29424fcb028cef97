#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# `cmake --install` puts every file in place: into a temporary prefix (the exact list of files
# is checked and printed), and with DESTDIR under /usr, where the configuration must land in
# /etc and the unit must be docs/nexusd.service itself.
. "$(dirname "$0")/lib.sh"

prefix=$work/prefix
install_to "$prefix"
(cd "$prefix" && find . \( -type f -o -type l \) | sed 's|^\./||' | LC_ALL=C sort) >"$work/got"
echo "installed under $prefix:"
sed 's/^/  /' "$work/got"

{
    printf '%s\n' bin/nexusd bin/nexusctl bin/nexus-bench etc/nexus/nexusd.conf \
        lib/systemd/system/nexusd.service share/man/man8/nexusd.8 share/man/man1/nexusctl.1 \
        share/bash-completion/completions/nexusd share/bash-completion/completions/nexusctl \
        share/doc/nexus/README.md share/doc/nexus/PACKAGING.md share/doc/nexus/seccomp-nexusd.json
    for d in "$NEXUS_SOURCE_DIR"/docs/*.md; do echo "share/doc/nexus/docs/$(basename "$d")"; done
} | LC_ALL=C sort >"$work/want"
if diff -u "$work/want" "$work/got" >"$work/diff"; then
    ok "the install holds exactly the $(wc -l <"$work/want") expected files"
else
    fail "installed files differ from the expected list (- missing, + unexpected):"
    sed -n '3,$p' "$work/diff" | grep '^[-+]' >&2 || true
fi

for p in nexusd nexusctl; do
    v=$("$prefix/bin/$p" --version 2>&1) || true
    [[ $v == "$p "[0-9]* ]] && ok "$p --version: $v" || fail "$prefix/bin/$p --version printed '$v'"
done
[ -x "$prefix/bin/nexus-bench" ] && ok "nexus-bench is executable" || fail "nexus-bench not executable"
[ "$(stat -c %a "$prefix/etc/nexus/nexusd.conf")" = 644 ] && ok "nexusd.conf mode 644" ||
    fail "nexusd.conf mode $(stat -c %a "$prefix/etc/nexus/nexusd.conf")"
cmp -s "$NEXUS_SOURCE_DIR/docs/nexusd.conf" "$prefix/etc/nexus/nexusd.conf" && ok "nexusd.conf is docs/nexusd.conf" ||
    fail "installed nexusd.conf differs from docs/nexusd.conf"

exec_start=$(grep '^ExecStart=' "$prefix/lib/systemd/system/nexusd.service")
want="ExecStart=$prefix/bin/nexusd --data-dir /var/lib/nexus --config $prefix/etc/nexus/nexusd.conf --log-json"
[ "$exec_start" = "$want" ] && ok "the unit runs the installed nexusd with the installed config" ||
    fail "unit: '$exec_start', want '$want'"

# The packaging layout: prefix /usr, configuration in /etc.
dest=$work/dest
install_to /usr "$dest"
[ -f "$dest/etc/nexus/nexusd.conf" ] && [ ! -e "$dest/usr/etc" ] && ok "prefix /usr: configuration in /etc/nexus" ||
    fail "prefix /usr: no $dest/etc/nexus/nexusd.conf (or a usr/etc)"
cmp -s "$NEXUS_SOURCE_DIR/docs/nexusd.service" "$dest/usr/lib/systemd/system/nexusd.service" &&
    ok "prefix /usr: the installed unit is docs/nexusd.service" ||
    fail "prefix /usr: installed unit differs from docs/nexusd.service"
[ -x "$dest/usr/bin/nexusd" ] && ok "prefix /usr: /usr/bin/nexusd" || fail "prefix /usr: no usr/bin/nexusd"
finish
