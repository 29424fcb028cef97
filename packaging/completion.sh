#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# Writes the bash completion of nexusd or nexusctl, read from the program's own
# --help (and, for nexusctl, each command's --help), so that the completion offers exactly the
# flags the binary accepts. cmake/packaging.cmake runs it at build time:
#   packaging/completion.sh nexusd PATH/TO/nexusd [OUTPUT]
#   packaging/completion.sh nexusctl PATH/TO/nexusctl [OUTPUT]
# (OUTPUT is written whole or not at all; without it, stdout).
# What it reads from a help text: a line `  [-x, ]--flag[ METAVAR]  description` declares a
# flag when the flag starts within 8 columns (deeper lines continue a description); METAVAR,
# after one space, or "(default: X)" with X not false or true, says the flag takes a value (a
# flag with neither is read as taking none); a description that starts `a | b | c` lists
# the values; FILE, DIR or PEM in the metavar or description, or a description starting
# "... file:", means a path.
# nexusctl's commands are the first words of the lines under "Commands".
set -euo pipefail

name=${1:?usage: completion.sh nexusd|nexusctl BINARY [OUTPUT]}
bin=${2:?usage: completion.sh nexusd|nexusctl BINARY [OUTPUT]}
if [ -n "${3:-}" ]; then
    bash "$0" "$name" "$bin" >"$3.tmp" || { rm -f "$3.tmp"; exit 1; }
    mv "$3.tmp" "$3"
    exit 0
fi

# One line per flag: "NAMES<TAB>KIND<TAB>VALUES", NAMES being "-x --flag" or "--flag", KIND
# one of flag (takes no value, or we cannot tell), value, file, enum.
flags() {
    awk '
    # mawk has no {m,n}: the indentation is measured first.
    match($0, /^ +/) && RLENGTH <= 8 && match($0, /^ +(-[a-zA-Z], +)?--[a-z0-9][a-z0-9-]*/) {
        head = substr($0, RSTART, RLENGTH)
        rest = substr($0, RSTART + RLENGTH)
        gsub(/[ ,]+/, " ", head); sub(/^ /, "", head)
        meta = ""
        if (match(rest, /^ [^ ]+/)) { meta = substr(rest, 2, RLENGTH - 1); rest = substr(rest, RLENGTH + 1) }
        sub(/^ +/, "", rest)
        # A value: a metavar, or a default other than false/true ("(default: X)").
        kind = meta == "" ? "flag" : "value"
        if (kind == "flag" && match(rest, /\(default: [^)]*\)/) && \
            substr(rest, RSTART, RLENGTH) !~ /^\(default: (false|true)\)$/)
            kind = "value"
        if (meta ~ /FILE|DIR/ || rest ~ /(^|[^A-Za-z])(FILE|DIR|PEM)([^A-Za-z]|$)/ || rest ~ /^[a-z ]* file:/)
            kind = "file"
        values = ""
        n = split(rest, part, / \| /)
        if (n > 1) {
            for (i = 1; i <= n; i++) {
                if (!match(part[i], /^[a-z][a-z0-9_-]*(:[A-Z]+)?/)) { values = ""; break }
                v = substr(part[i], 1, RLENGTH); sub(/:[A-Z]+$/, ":", v)
                values = values (values == "" ? "" : " ") v
            }
            if (values != "") kind = "enum"
        }
        print head "\t" kind "\t" values
    }'
}

# Prints `case` arms for the flags on stdin: enumerations and paths complete their value,
# other value flags complete nothing.
value_arms() {
    local names kind values
    while IFS=$'\t' read -r names kind values; do
        case $kind in
        enum) printf '    %s) COMPREPLY=($(compgen -W '\''%s'\'' -- "$cur")); return ;;\n' \
            "${names// /|}" "$values" ;;
        file) printf '    %s) _nexus_files "$cur"; return ;;\n' "${names// /|}" ;;
        value) printf '    %s) return ;;\n' "${names// /|}" ;;
        esac
    done
}

# The flag names on stdin, on one line.
names_of() {
    cut -f1 | tr '\n' ' ' | sed 's/ *$//'
}

cat <<'EOF'
# bash completion, generated at build time from the program's --help by packaging/completion.sh.
# Installed in share/bash-completion/completions; bash-completion loads it on first use.

_nexus_files()
{
    compopt -o filenames 2>/dev/null
    COMPREPLY=($(compgen -f -- "$1"))
}
EOF

help=$("$bin" --help)
case $name in
nexusd)
    all=$(flags <<<"$help")
    [ -n "$all" ] || { echo "completion: no flag found in $bin --help" >&2; exit 1; }
    cat <<EOF

_nexusd()
{
    local cur=\${COMP_WORDS[COMP_CWORD]} prev=\${COMP_WORDS[COMP_CWORD-1]}
    COMPREPLY=()
    case \$prev in
$(value_arms <<<"$all")
    esac
    COMPREPLY=(\$(compgen -W '$(names_of <<<"$all")' -- "\$cur"))
}
complete -F _nexusd nexusd
EOF
    ;;
nexusctl)
    global=$(flags <<<"$help")
    cmds=$(awk '/^Commands/ { on = 1; next } on && NF == 0 { exit } on && /^  [a-z]/ { print $1 }' \
        <<<"$help")
    [ -n "$global" ] && [ -n "$cmds" ] || { echo "completion: no flag or command in $bin --help" >&2; exit 1; }
    cmd_arms=""
    cmd_value_arms=""
    for c in $cmds; do
        own=$(flags < <("$bin" "$c" --help) | grep -v -x -F -f <(printf '%s\n' "$global") || true)
        cmd_arms+="    $c) flags='$(names_of <<<"$own")' ;;"$'\n'
        cmd_value_arms+=$(value_arms <<<"$own")$'\n'
    done
    # Global flags that take a value: their value is not the command.
    skip=$(awk -F'\t' '$2 != "flag" { gsub(/ /, "|", $1); printf "%s%s", sep, $1; sep = "|" }' \
        <<<"$global")
    cat <<EOF

_nexusctl()
{
    local cur=\${COMP_WORDS[COMP_CWORD]} prev=\${COMP_WORDS[COMP_CWORD-1]}
    local cmd="" flags="" i
    COMPREPLY=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        case \${COMP_WORDS[i]} in
        ${skip:-__none__}) ((i++)) ;;
        -*) ;;
        *) cmd=\${COMP_WORDS[i]}; break ;;
        esac
    done
    case \$prev in
$(value_arms <<<"$global")
$(sort -u <<<"$cmd_value_arms" | sed '/^$/d')
    esac
    case \$cmd in
${cmd_arms%$'\n'}
    "")
        if [[ \$cur != -* ]]; then
            COMPREPLY=(\$(compgen -W '$(tr '\n' ' ' <<<"$cmds" | sed 's/ *$//')' -- "\$cur"))
            return
        fi ;;
    esac
    [[ \$cur == -* ]] && COMPREPLY=(\$(compgen -W "\$flags $(names_of <<<"$global")" -- "\$cur"))
    return 0
}
complete -o default -F _nexusctl nexusctl
EOF
    ;;
*)
    echo "completion: unknown program $name" >&2
    exit 2
    ;;
esac
