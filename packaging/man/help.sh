#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# The help text help2man reads, made from the program's own --help so that the man pages never
# drift from the code. cmake/packaging.cmake runs help2man on a wrapper named like the program
# (help2man takes the page's name from it) that calls:
#   packaging/man/help.sh BINARY --help | --version
# It passes --version through and rewrites --help only where help2man's layout rules need it:
#   - the flags heading ("Flags (...):", "Global flags (...):") becomes "Options:" (help2man's
#     OPTIONS section) and stays below it as a sentence;
#   - for nexusctl, the help of each command follows the global flags, in a COMMANDS section,
#     each headed by its usage line (the "Global flags (see ...)" reminder that ends each one is
#     left out);
#   - "Exit statuses:" becomes an EXIT STATUS section, "Environment: ..." an ENVIRONMENT one;
#   - each example line gets help2man's "$ " (one verbatim line each; a line continued with a
#     backslash is joined to the next);
#   - a blank line goes before each flag line that follows text, so that help2man does not
#     read the flag as the continuation of that text.
set -euo pipefail
bin=${1:?usage: help.sh BINARY --help|--version}
shift
[ "${1:-}" = --help ] || exec "$bin" "$@"

help=$("$bin" --help)
commands=$(awk '/^Commands/ { on = 1; next } on && NF == 0 { exit } on && /^  [a-z]/ { print $1 }' \
    <<<"$help")

# The help of each command: its usage line as a subsection heading (help2man wants the line
# after a heading indented: the description is, by one column).
command_help() {
    local c
    for c in $commands; do
        "$bin" "$c" --help | awk '
            NR == 1 && sub(/^Usage: /, "") { print $0 ":"; head = 1; next }
            /^Global flags \(see / { exit }
            NF == 0 { head = 0 }
            head { print " " $0; next }
            { print }'
    done
}

# Where the flags block ends: the first blank line after its heading.
flags_end=$(awk '/^(Global f|F)lags( \(.*\))?:$/ { on = 1 } on && NF == 0 { print NR; exit }' \
    <<<"$help")
{
    if [ -n "$commands" ] && [ -n "$flags_end" ]; then
        head -n "$flags_end" <<<"$help"
        echo "*Commands*"
        command_help
        echo
        tail -n "+$((flags_end + 1))" <<<"$help"
    else
        echo "$help"
    fi
} | awk '
    function indent(s) { return match(s, /^ +/) ? RLENGTH : 0 }
    /^(Global f|F)lags( \(.*\))?:$/ {
        print "Options:"
        print substr($0, 1, length($0) - 1) "."
        prev = "x"
        next
    }
    /^Exit status(es)?:$/ { print "*Exit status*"; prev = ""; next }
    /^Environment: / { sub(/^Environment: /, "Environment:\n"); print; prev = "x"; next }
    /^Examples:$/ { examples = 1; print; prev = ""; next }
    examples && NF == 0 { if (line != "") print "  $ " line; examples = 0; line = "" }
    examples {
        s = $0; sub(/^ +/, "", s)
        line = line (line == "" ? "" : " ") s
        if (sub(/ *\\$/, "", line)) next
        print "  $ " line; line = ""
        next
    }
    indent($0) >= 1 && indent($0) <= 8 && substr($0, indent($0) + 1, 1) == "-" && prev != "" {
        print ""
    }
    { print; prev = $0 }
    END { if (examples && line != "") print "  $ " line }'
