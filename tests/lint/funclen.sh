#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# No function of broker/ or handlers/ is longer than 70 lines (from the line of its opening
# brace to its closing brace) unless the comment just above it says why, with a line that
# starts "Long:" (docs/ARCHITECTURE.md, "Code shape"). Functions are recognised as the code
# formatted by the repo's .clang-format writes them: a `{` alone at column 0, closed by a `}`
# at column 0. Prints each offender and exits 1 if there is any.
set -u
cd "${1:-$(dirname "$0")/../..}" || exit 2
max=70
awk -v max="$max" '
    FNR == 1 { why = 0; start = 0 }
    /^\/\*|^\/\/|^ \*/ { if ($0 ~ /Long:/) why = 1 }
    /^[a-zA-Z].*\(/ && !start { name = $0 }
    /^\{$/ { start = FNR; next }
    /^\}/ && start {
        n = FNR - start + 1
        if (n > max && !why) {
            printf "%s:%d: %d lines: %s\n", FILENAME, start, n, name
            bad = 1
        }
        start = 0; why = 0
        next
    }
    /^$/ && !start { }
    END { exit bad }
' broker/*.c handlers/*.c
rc=$?
[ $rc -eq 0 ] && echo "funclen: every function within $max lines (or its length explained)"
exit $rc
