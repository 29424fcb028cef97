#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# nexusd starts and serves under its systemd unit's system call filter and hardening. systemd
# is not PID 1 where the tests run, so the settings that matter to nexusd are applied here by
# the kernel's own mechanisms, the way systemd applies them:
#   - SystemCallFilter=, SystemCallErrorNumber=, SystemCallArchitectures=native and
#     RestrictAddressFamilies= of docs/nexusd.service: written as a seccomp profile by
#     packaging/seccomp-profile.sh (from `systemd-analyze syscall-filter`) and loaded by
#     seccomp_exec (tests/packaging/seccomp_exec.c) just before it execs nexusd;
#   - NoNewPrivileges=, CapabilityBoundingSet= (empty), DynamicUser= (an unprivileged uid:
#     nobody): setpriv; LimitNOFILE=, LimitMEMLOCK=: prlimit, where the machine allows them;
#   - ProtectSystem=strict with StateDirectory=: a private mount namespace in which every file
#     system is read-only except the data directory (unshare).
#   - Type=notify, WatchdogSec=: NOTIFY_SOCKET and WATCHDOG_USEC, read by a datagram listener.
# (The uid, capability, limit and mount parts need root; without it nexusd runs as the user
# running the test, still under the same filter.) Not reproduced: PrivateTmp, PrivateDevices,
# ProtectProc/ProcSubset, ProtectKernel*, MemoryDenyWriteExecute, RestrictNamespaces,
# LockPersonality, RestrictRealtime, PrivateUsers (those need systemd itself).
# Then, in the sandbox: the client emits and subscribes, the log is written, SIGHUP reloads,
# READY=1, WATCHDOG=1 and STOPPING=1 reach the notify socket, SIGTERM drains and exits 0, and
# nothing logs a refused call. And the filter is really there: without io_uring_setup in it
# nexusd refuses to start naming seccomp, and a netlink socket (not in
# RestrictAddressFamilies=) is refused while an AF_INET one is not. Last, packaging/seccomp-nexusd.json (the Docker
# profile) must be what packaging/seccomp-profile.sh --docker makes of the unit today.
. "$(dirname "$0")/lib.sh"

unit=$NEXUS_SOURCE_DIR/docs/nexusd.service
gen=$NEXUS_SOURCE_DIR/packaging/seccomp-profile.sh
profile=$work/unit-profile.json
bash "$gen" "$unit" >"$profile"

# The shipped Docker profile is the unit's filter plus what runc needs.
if bash "$gen" --docker "$unit" | diff -u "$NEXUS_SOURCE_DIR/packaging/seccomp-nexusd.json" - >"$work/diff"; then
    ok "packaging/seccomp-nexusd.json matches the unit's filter"
else
    fail "packaging/seccomp-nexusd.json is out of date (regenerate it: see packaging/seccomp-profile.sh):"
    cat "$work/diff" >&2
fi

chmod 755 "$work"
state=$work/state
mkdir -m 700 "$state"
root=0
[ "$(id -u)" = 0 ] && root=1
if [ $root = 1 ]; then
    chown 65534:65534 "$state"
    # ProtectSystem=strict: in a private mount namespace, every mount read-only, then the
    # state directory bound over itself and made writable again; then exec the rest.
    ro_root='for m in $(findmnt -rno TARGET | sort -u); do
                 case $m in /proc* | /sys* | /dev*) continue ;; esac
                 mount -o remount,bind,ro "$m" 2>/dev/null || true
             done
             if [ -w / ] || touch "$1/../rw-probe" 2>/dev/null; then
                 echo "sandbox: the root file system is still writable" >&2; exit 97
             fi
             mount --bind "$1" "$1" && mount -o remount,bind,rw "$1" || exit 97
             shift; exec "$@"'
    # LimitNOFILE=, LimitMEMLOCK= of the unit, where this machine lets root raise them.
    limits=(prlimit --nofile=1048576:1048576 --memlock=unlimited:unlimited --)
    if ! "${limits[@]}" true 2>/dev/null; then
        echo "note: this machine refuses to raise RLIMIT_NOFILE/MEMLOCK to the unit's values" \
            "(hard limits here: $(ulimit -Hn) files, $(ulimit -Hl) KiB locked): nexusd keeps them"
        limits=()
    fi
    sandbox=(unshare --mount --propagation private -- bash -c "$ro_root" _ "$state"
        "${limits[@]}"
        setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all --bounding-set=-all
        --no-new-privs --)
else
    echo "note: not root: nexusd runs as $(id -un), in the host's mount namespace, under the filter only"
    sandbox=()
fi

# The notify socket: every datagram, one line each (newlines inside as |).
notify=$work/notify
python3 -u -c '
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
os.chmod(sys.argv[1], 0o777)
while True:
    print(s.recv(4096).decode().replace("\n", "|"), flush=True)
' "$notify" >"$work/notify.log" 2>&1 &
listener=$!
cleanup_hooks+=("kill $listener 2>/dev/null")
for _ in $(seq 50); do [ -S "$notify" ] && break; sleep 0.1; done
[ -S "$notify" ] || { fail "the notify listener did not start"; cat "$work/notify.log" >&2; finish; }

port=$(free_port)
broker=127.0.0.1:$port
# ASan (the asan preset): LeakSanitizer needs ptrace, which the filter refuses (as systemd's
# does); leaks are the other tests' business.
asan="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
"${sandbox[@]}" env NOTIFY_SOCKET="$notify" WATCHDOG_USEC=1000000 ASAN_OPTIONS="$asan" \
    "$SECCOMP_EXEC" "$profile" "$NEXUSD" --listen "$broker" --shards 2 --data-dir "$state" \
    >"$work/nexusd.log" 2>&1 &
pid=$!
cleanup_hooks+=("kill -9 $pid 2>/dev/null")

up=0
for _ in $(seq 300); do # 30 s: an ASan build under load starts slowly
    kill -0 "$pid" 2>/dev/null || break
    if "$NEXUSCTL" -b "$broker" stats >/dev/null 2>&1; then up=1; break; fi
    sleep 0.1
done
if [ $up = 0 ]; then
    fail "nexusd did not serve under the sandbox; its output:"
    cat "$work/nexusd.log" >&2
    finish
fi
ok "nexusd serves on $broker under the unit's filter"

st=/proc/$pid/status
[ "$(cat /proc/$pid/comm)" = nexusd ] || fail "pid $pid is $(cat /proc/$pid/comm), not nexusd"
[ "$(awk '/^Seccomp:/ { print $2 }' "$st")" = 2 ] || fail "nexusd runs without a seccomp filter"
[ "$(awk '/^NoNewPrivs:/ { print $2 }' "$st")" = 1 ] || fail "nexusd runs without no_new_privs"
if [ $root = 1 ]; then
    [ "$(awk '/^Uid:/ { print $2 }' "$st")" = 65534 ] || fail "nexusd runs as uid $(awk '/^Uid:/ { print $2 }' "$st")"
    [ "$(awk '/^CapBnd:/ { print $2 }' "$st")" = 0000000000000000 ] || fail "nexusd has a capability bounding set"
    if [ ${#limits[@]} -gt 0 ]; then
        [ "$(awk '/^Max open files/ { print $4 }' /proc/$pid/limits)" = 1048576 ] || fail "LimitNOFILE not applied"
        [ "$(awk '/^Max locked memory/ { print $4 }' /proc/$pid/limits)" = unlimited ] || fail "LimitMEMLOCK not applied"
    fi
fi
ok "nexusd (pid $pid): $(grep -E '^(Uid|Seccomp|NoNewPrivs|CapEff):' "$st" | tr -s '\t\n' '  ')"

# Serve: a subscriber receives what a publisher emits; the acknowledgements carry sequences.
"$NEXUSCTL" -b "$broker" -v subscribe 'sandbox:*:*:*' -c 7 -n 2 -t 20s >"$work/sub.out" 2>"$work/sub.err" &
sub=$!
for _ in $(seq 100); do grep -q subscribed "$work/sub.err" && break; sleep 0.1; done
a1=$("$NEXUSCTL" -b "$broker" emit sandbox:probe:v1:completed -c 7 -d '{"n": 1}' 2>&1) || true
a2=$("$NEXUSCTL" -b "$broker" emit sandbox:probe:v1:completed -c 7 -d '{"n": 2}' 2>&1) || true
[[ $a1 == *'"sequence":1'* && $a2 == *'"sequence":2'* ]] && ok "emits acknowledged: sequences 1, 2" ||
    fail "emit acknowledgements: '$a1' '$a2'"
if wait "$sub" && [ "$(grep -c '"event_type":"sandbox:probe:v1:completed"' "$work/sub.out")" = 2 ]; then
    ok "the subscriber received both events"
else
    fail "subscriber: $(cat "$work/sub.out" "$work/sub.err")"
fi
segs=$(find "$state" -name '*.seg' -size +0c | wc -l)
[ "$segs" -ge 1 ] && ok "the event log is written in the state directory ($segs segment(s))" ||
    fail "no log segment with data under $state"

kill -HUP "$pid"
sleep 0.5
kill -0 "$pid" 2>/dev/null && ok "SIGHUP: still serving" || fail "SIGHUP killed nexusd"
sleep 1 # a watchdog period
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
[ $rc = 0 ] && ok "SIGTERM: drained and exited 0" || fail "nexusd exited $rc after SIGTERM"
sleep 0.2
for msg in READY=1 WATCHDOG=1 RELOADING=1 STOPPING=1; do
    grep -q "$msg" "$work/notify.log" || fail "no $msg on the notify socket"
done
ok "notify socket: $(cut -d'|' -f1 "$work/notify.log" | sort | uniq -c | tr -s ' \n' ' ')"
if grep -Ei 'not permitted|EPERM|seccomp|Permission denied|Read-only file system' "$work/nexusd.log" >&2; then
    fail "nexusd logged a refused operation (above)"
else
    ok "nexusd logged no refused operation"
fi

# The filter is really applied: without io_uring_setup nexusd cannot start, and says why.
grep -v '"io_uring_setup",' "$profile" >"$work/no-uring.json"
rc=0
out=$(ASAN_OPTIONS="$asan" "$SECCOMP_EXEC" "$work/no-uring.json" "$NEXUSD" --listen "127.0.0.1:$(free_port)" 2>&1) || rc=$?
if [ $rc = 1 ] && grep -q seccomp <<<"$out"; then
    ok "without io_uring_setup in the filter: exit 1, '$(grep -o 'io_uring_setup was refused[^,]*' <<<"$out" | head -n 1)'"
else
    fail "without io_uring_setup in the filter nexusd exited $rc: $out"
fi
# ... and RestrictAddressFamilies=: an AF_INET socket may be opened, an AF_NETLINK one not.
families='
import socket
for name in ("AF_INET", "AF_UNIX", "AF_NETLINK"):
    try:
        socket.socket(getattr(socket, name), socket.SOCK_DGRAM, 0).close()
        print(name, "allowed")
    except OSError as e:
        print(name, "refused:", e.strerror)'
got=$("$SECCOMP_EXEC" "$profile" python3 -c "$families" 2>&1 | tr '\n' ';') || true
want="AF_INET allowed;AF_UNIX allowed;AF_NETLINK refused: Operation not permitted;"
[ "$got" = "$want" ] && ok "socket families under the filter: $got" || fail "socket families: '$got', want '$want'"
finish
