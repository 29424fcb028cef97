#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# Writes on stdout a seccomp profile in the OCI/Docker format (JSON) that filters system calls
# the way a systemd unit does:
#   - SystemCallFilter= lines, read in order as systemd reads them: the first line makes an
#     allow list (and then @default is allowed too) or, with ~, a deny list; later lines add
#     or (with ~) remove names; groups (@system-service, ...) are expanded with this machine's
#     `systemd-analyze syscall-filter`;
#   - SystemCallErrorNumber= as the errno of refused calls (EPERM if unset);
#   - RestrictAddressFamilies= (an allow list) as rules on the first argument of socket().
# Usage:
#   packaging/seccomp-profile.sh UNIT                # the unit's own filter (the tests use it)
#   packaging/seccomp-profile.sh --docker UNIT       # plus what runc calls between loading the
#                                                    # profile and starting nexusd
# packaging/seccomp-nexusd.json is `--docker docs/nexusd.service`; tests/packaging/sandbox_test.sh
# fails when it is out of date. Regenerate it with:
#   packaging/seccomp-profile.sh --docker docs/nexusd.service > packaging/seccomp-nexusd.json
set -euo pipefail

docker=0
if [ "${1:-}" = "--docker" ]; then
    docker=1
    shift
fi
unit=${1:?usage: seccomp-profile.sh [--docker] UNIT}
[ -r "$unit" ] || { echo "seccomp-profile: cannot read $unit" >&2; exit 2; }

# Every group, as "GROUP MEMBER" lines (members may be groups themselves).
groups=$(systemd-analyze syscall-filter 2>/dev/null | awk '
    /^@/ { g = $1; next }
    /^ *#/ || NF == 0 { next }
    g != "" { print g, $1 }')
[ -n "$groups" ] || { echo "seccomp-profile: systemd-analyze syscall-filter printed nothing" >&2; exit 2; }

# Prints the system calls NAME stands for (a group is expanded recursively).
expand() {
    local name=$1 m
    if [ "${name#@}" = "$name" ]; then
        echo "$name"
        return
    fi
    local members
    members=$(awk -v g="$name" '$1 == g { print $2 }' <<<"$groups")
    [ -n "$members" ] || { echo "seccomp-profile: unknown group $name" >&2; exit 2; }
    for m in $members; do expand "$m"; done
}

# The value of every KEY= line of the [Service] section, in order (one line each).
values() {
    awk -v key="$1" '
        /^\[/ { service = ($0 == "[Service]"); next }
        service && index($0, key "=") == 1 { print substr($0, length(key) + 2) }' "$unit"
}

allow_list=""
set=""
while IFS= read -r line; do
    [ -n "$line" ] || continue
    invert=0
    if [ "${line#\~}" != "$line" ]; then
        invert=1
        line=${line#\~}
    fi
    if [ -z "$allow_list" ]; then
        allow_list=$((1 - invert))
        [ "$allow_list" = 1 ] && set=$(expand @default)
    fi
    names=$(for n in $line; do expand "$n"; done | sort -u)
    if [ "$invert" != "$allow_list" ]; then # allow list + name, or deny list + ~name: add
        set=$(printf '%s\n%s\n' "$set" "$names" | sed '/^$/d' | sort -u)
    else
        set=$(comm -23 <(printf '%s\n' "$set" | sort -u) <(printf '%s\n' "$names"))
    fi
done < <(values SystemCallFilter)
[ "$allow_list" = 1 ] || { echo "seccomp-profile: $unit has no SystemCallFilter= allow list" >&2; exit 2; }

errno_name=$(values SystemCallErrorNumber | tail -n 1)
case "${errno_name:-EPERM}" in
EPERM) errno=1 ;;
EACCES) errno=13 ;;
ENOSYS) errno=38 ;;
*) echo "seccomp-profile: SystemCallErrorNumber=$errno_name: only EPERM, EACCES, ENOSYS" >&2; exit 2 ;;
esac

families=""
for f in $(values RestrictAddressFamilies); do
    case "$f" in
    AF_UNIX | AF_LOCAL) families="$families 1" ;;
    AF_INET) families="$families 2" ;;
    AF_INET6) families="$families 10" ;;
    AF_NETLINK) families="$families 16" ;;
    AF_PACKET) families="$families 17" ;;
    *) echo "seccomp-profile: RestrictAddressFamilies=$f: not known here (an allow list of AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, AF_PACKET)" >&2; exit 2 ;;
    esac
done

if [ "$docker" = 1 ]; then
    # runc (without --security-opt no-new-privileges) loads the profile before it changes to
    # the image's USER and drops capabilities; those calls are in @privileged, which the unit
    # refuses, and nexusd never makes them itself.
    set=$(printf '%s\n' "$set" setgroups setresuid setuid capset | sort -u)
fi
# socket() is allowed only for the families listed (all of them without RestrictAddressFamilies).
[ -n "$families" ] && set=$(printf '%s\n' "$set" | grep -vx socket)

echo '{'
echo '  "defaultAction": "SCMP_ACT_ERRNO",'
echo "  \"defaultErrnoRet\": $errno,"
echo '  "syscalls": ['
echo '    {'
echo '      "names": ['
printf '%s\n' "$set" | sed 's/.*/        "&",/; $ s/,$//'
echo '      ],'
echo '      "action": "SCMP_ACT_ALLOW"'
if [ -n "$families" ]; then
    for f in $families; do
        echo '    },'
        echo '    {'
        echo '      "names": ["socket"],'
        echo '      "action": "SCMP_ACT_ALLOW",'
        echo "      \"args\": [{\"index\": 0, \"value\": $f, \"op\": \"SCMP_CMP_EQ\"}]"
    done
fi
echo '    }'
echo '  ]'
echo '}'
