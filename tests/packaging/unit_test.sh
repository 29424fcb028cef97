#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# The installed systemd unit: `systemd-analyze verify` accepts it (its ExecStart and its man:
# documentation resolve in the install), `systemd-analyze security --offline=yes` rates it
# 3.0 or better, and its system call filter keeps io_uring.
. "$(dirname "$0")/lib.sh"

prefix=$work/prefix
install_to "$prefix"
unit=$prefix/lib/systemd/system/nexusd.service

# verify runs `man nexusd(8)` for Documentation=: MANPATH points it at the install.
if out=$(MANPATH=$prefix/share/man systemd-analyze verify "$unit" 2>&1) && [ -z "$out" ]; then
    ok "systemd-analyze verify: no complaint"
else
    fail "systemd-analyze verify $unit:"
    echo "$out" >&2
fi

# ... and it does check: without the man page, it complains.
if MANPATH=$work/nowhere systemd-analyze verify "$unit" >/dev/null 2>&1; then
    fail "systemd-analyze verify accepted the unit with its man page missing"
fi

sec=$(systemd-analyze security --offline=yes "$unit" 2>&1) || true
score=$(sed -n 's/^→ Overall exposure level for nexusd.service: \([0-9.]*\) .*/\1/p' <<<"$sec")
echo "systemd-analyze security --offline=yes: the settings it still counts against the unit:"
grep '✗' <<<"$sec" | sed 's/  */ /g; s/^/  /' || true
if [ -z "$score" ]; then
    fail "no overall exposure level in the output of systemd-analyze security:"
    echo "$sec" >&2
elif awk -v s="$score" 'BEGIN { exit !(s <= 3.0) }'; then
    ok "exposure level $score (goal: 3.0 or less): $(grep '^→' <<<"$sec")"
else
    fail "exposure level $score, above 3.0"
fi

# io_uring: listed by name in the unit (some systemd versions leave it out of @system-service),
# and allowed by the filter the unit's lines make.
allowed=$(bash "$NEXUS_SOURCE_DIR/packaging/seccomp-profile.sh" "$unit")
for call in io_uring_setup io_uring_enter io_uring_register; do
    grep -q "^SystemCallFilter=.*\b$call\b" "$unit" || fail "$call is not named in SystemCallFilter="
    grep -q "\"$call\"" <<<"$allowed" || fail "the unit's filter does not allow $call"
done
ok "io_uring_setup, io_uring_enter, io_uring_register: named and allowed"
printf '[Service]\nSystemCallFilter=@system-service\n' >"$work/probe.service"
service_class=$(bash "$NEXUS_SOURCE_DIR/packaging/seccomp-profile.sh" "$work/probe.service")
if grep -q '"io_uring_setup"' <<<"$service_class"; then
    echo "note: this systemd ($(systemd-analyze --version | head -n 1)) has io_uring in @system-service too"
else
    echo "note: this systemd ($(systemd-analyze --version | head -n 1)) leaves io_uring out of @system-service"
fi
for call in mount ptrace reboot setuid kexec_load bpf; do
    grep -q "\"$call\"" <<<"$allowed" && fail "the unit's filter allows $call"
done
ok "mount, ptrace, reboot, setuid, kexec_load, bpf: refused"
finish
