#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# The man pages built from --help (cmake/packaging.cmake): groff renders both without a
# warning and `man -l` shows them; each has its sections; every flag the binary's --help lists
# (and, for nexusctl, every command and its flags) is in the page, whose version is the
# binary's.
. "$(dirname "$0")/lib.sh"

# Long flags of a help text (lines that start with a flag within 8 columns).
flags_of() {
    awk 'match($0, /^ +/) && RLENGTH <= 8 && match($0, /^ +(-[a-zA-Z], +)?--[a-z0-9][a-z0-9-]*/) {
             s = substr($0, 1, RLENGTH); sub(/.* /, "", s); print s }' | sort -u
}

check_page() { # page binary sections...
    local page=$1 bin=$2 text
    shift 2
    [ -s "$page" ] || { fail "$page was not built"; return; }
    if ! text=$(groff -man -Tutf8 -ww -rHY=0 -rLL=200n -P-cbou "$page" 2>"$work/groff.err"); then
        fail "groff could not render $page"
        return
    fi
    [ -s "$work/groff.err" ] && { fail "groff warns about $page:"; cat "$work/groff.err" >&2; }
    local s
    for s in NAME SYNOPSIS DESCRIPTION OPTIONS "$@" "SEE ALSO"; do
        grep -q "^$s\$" <<<"$text" || fail "$(basename "$page"): no $s section"
    done
    local missing=""
    local help
    help=$("$bin" --help)
    for f in $(flags_of <<<"$help"); do
        grep -q -- "$f\b" <<<"$text" || missing="$missing $f"
    done
    [ -z "$missing" ] && ok "$(basename "$page"): all $(flags_of <<<"$help" | wc -l) flags of $(basename "$bin") --help" ||
        fail "$(basename "$page") lacks:$missing"
    local v
    v=$("$bin" --version)
    grep -q "^$v " <<<"$(tail -n 3 <<<"$text" | sed 's/^ *//')" && ok "$(basename "$page"): version $v" ||
        fail "$(basename "$page"): footer does not name $v"
    printf '%s\n' "$text" >"$work/$(basename "$page").txt"
}

man8=$NEXUS_BUILD_DIR/packaging/man/nexusd.8
man1=$NEXUS_BUILD_DIR/packaging/man/nexusctl.1
check_page "$man8" "$NEXUSD" SIGNALS "EXIT STATUS" ENVIRONMENT FILES EXAMPLES
check_page "$man1" "$NEXUSCTL" COMMANDS "EXIT STATUS" ENVIRONMENT FILES EXAMPLES

# nexusctl: each command has its subsection, with its own flags.
ctl_help=$("$NEXUSCTL" --help)
cmds=$(awk '/^Commands/ { on = 1; next } on && NF == 0 { exit } on && /^  [a-z]/ { print $1 }' \
    <<<"$ctl_help")
for c in $cmds; do
    sub=$(awk -v c="nexusctl $c " 'index($0, c) == 4 { on = 1; next } on && /^   nexusctl / { exit } on' \
        "$work/nexusctl.1.txt")
    [ -n "$sub" ] || { fail "nexusctl.1: no subsection for $c"; continue; }
    missing=""
    cmd_help=$("$NEXUSCTL" "$c" --help)
    for f in $(sed '/^Global flags/,$d' <<<"$cmd_help" | flags_of); do
        grep -q -- "$f\b" <<<"$sub" || missing="$missing $f"
    done
    [ -z "$missing" ] && ok "nexusctl.1: $c and its flags" || fail "nexusctl.1, $c lacks:$missing"
done

# man(1) itself, as a user reads the page.
for page in "$man8" "$man1"; do
    out=$(MANWIDTH=100 man -l "$page" 2>&1 | col -b) || true
    if grep -q '^SYNOPSIS' <<<"$out" && grep -q '^OPTIONS' <<<"$out"; then
        ok "man -l $(basename "$page"): $(head -n 1 <<<"$out" | tr -s ' ')"
    else
        fail "man -l $page:"
        head -n 20 <<<"$out" >&2
    fi
done
finish
