#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# The bash completions built from --help (packaging/completion.sh): loaded into bash, they
# complete flags, the values of enumerated flags, file names, nexusctl's commands and each
# command's own flags; every flag of `nexusd --help` is offered.
. "$(dirname "$0")/lib.sh"

dir=$NEXUS_BUILD_DIR/packaging/completion
for f in nexusd nexusctl; do
    [ -s "$dir/$f" ] || fail "$dir/$f was not built"
    bash -n "$dir/$f" || fail "$dir/$f: not valid bash"
done
[ "$failed" = 0 ] || finish

mkdir "$work/files"
touch "$work/files/site.conf" "$work/files/ca.pem"
cd "$work/files"
# shellcheck disable=SC1090,SC1091
. "$dir/nexusd"
# shellcheck disable=SC1090,SC1091
. "$dir/nexusctl"
complete -p nexusd nexusctl >/dev/null || fail "nexusd or nexusctl has no completion registered"

# expect "WORDS ..." "EXPECTED": completes the last word of WORDS ("" for a new word).
expect() {
    local line=$1 want=$2 got
    read -r -a COMP_WORDS <<<"$line"
    [[ $line == *' ' ]] && COMP_WORDS+=("")
    COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
    COMPREPLY=()
    "_${COMP_WORDS[0]//-/_}" 2>/dev/null || true
    got=$(printf '%s\n' "${COMPREPLY[@]}" | sort | tr '\n' ' ' | sed 's/ *$//')
    [ "$got" = "$want" ] && ok "'$line<TAB>' -> $got" || fail "'$line<TAB>': '$got', want '$want'"
}
expect "nexusd --sl" "--slow-policy"
expect "nexusd --slow-policy " "disconnect drop"
expect "nexusd --log-level w" "warn"
expect "nexusd --config s" "site.conf"
expect "nexusd --listen " ""
ctl_help=$("$NEXUSCTL" --help)
cmds=$(awk '/^Commands/ { on = 1; next } on && NF == 0 { exit } on && /^  [a-z]/ { print $1 }' \
    <<<"$ctl_help" | sort | tr '\n' ' ')
expect "nexusctl " "${cmds% }"
expect "nexusctl -b 127.0.0.1:7400 su" "subscribe"
expect "nexusctl --tls-ca c" "ca.pem"
expect "nexusctl emit --camp" "--campaign"
expect "nexusctl emit --no" "--no-ack"
expect "nexusctl subscribe --no" ""
expect "nexusctl stream --heart" "--heartbeat-ms"
expect "nexusctl stats --pre" "--pretty"
expect "nexusctl --broker x:1 stats --ver" "--verbose --version"

# Every flag of nexusd --help.
help=$("$NEXUSD" --help)
want=$(awk 'match($0, /^ +/) && RLENGTH <= 8 && match($0, /^ +--[a-z0-9][a-z0-9-]*/) {
                s = substr($0, 1, RLENGTH); sub(/^ +/, "", s); print s }' <<<"$help" | sort)
COMP_WORDS=(nexusd --)
COMP_CWORD=1
_nexusd
got=$(printf '%s\n' "${COMPREPLY[@]}" | sort)
[ "$got" = "$want" ] && ok "nexusd --<TAB> offers all $(wc -l <<<"$want") flags of nexusd --help" ||
    fail "nexusd --<TAB> differs from nexusd --help: $(diff <(echo "$want") <(echo "$got") | grep '^[<>]' | tr '\n' ' ')"
finish
