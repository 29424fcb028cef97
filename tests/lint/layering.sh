#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# The layering rules of docs/ARCHITECTURE.md ("Layers"), checked on the source tree:
#  1. handlers/ includes no broker/ header but broker/core.h, and names no field of the core's
#     private structs (shard, conn, campaign, sub, broker);
#  2. the core (broker/) never includes handlers/; codec/ and ring/ include neither;
#  3. the io_uring user_data is encoded in broker/ud.h only (no bare op literals elsewhere),
#     and frame kinds are tested through codec_kind_* / CODEC_KIND_*, not bare numbers;
#  4. no comment or doc cites documents outside the repository.
# Prints each violation and exits 1 if there is any.
set -u
cd "${1:-$(dirname "$0")/../..}" || exit 2
bad=0
fail() {
    echo "layering: $*"
    bad=1
}

while IFS= read -r hit; do
    fail "handlers/ may include broker/core.h only: $hit"
done < <(grep -Hn '#include "broker/' handlers/*.c handlers/*.h | grep -v '"broker/core.h"')

# Fields of the core's private structs, as handlers would reach them.
fields='(->(sub_lists|conns|firehose|firehose_remote|broker|cfg|hooks_slot|interest|interest_mask|notify_mask|stats|outbox|listen_fd|ops_inflight|kill_next|flush_next)\b)|(\bs->campaigns\b)'
while IFS= read -r hit; do
    fail "handlers/ names a private field of the core: $hit"
done < <(grep -HnE -e "$fields" handlers/*.c handlers/*.h)
while IFS= read -r hit; do
    fail "handlers/ calls a private function of the core: $hit"
done < <(grep -HnE '(^|[^>_a-z])(conn|pubsub|shard)_[a-z_]+\(' handlers/*.c handlers/*.h)

while IFS= read -r hit; do
    fail "the core includes the handlers layer: $hit"
done < <(grep -Hn '#include "handlers/' broker/*.c broker/*.h | grep -v '^broker/main.c:')
while IFS= read -r hit; do
    fail "codec/ and ring/ depend on no other layer: $hit"
done < <(grep -HnE '#include "(broker|handlers)/' codec/* ring/*)

while IFS= read -r hit; do
    fail "user_data decoded outside broker/ud.h: $hit"
done < <(grep -HnE 'ud < 16|case [0-9]+:|OP_(RECV|SEND|CANCEL)\b' broker/shard.c broker/conn.c)
while IFS= read -r hit; do
    fail "frame kinds tested by number or by name: $hit"
done < <(grep -rHnE "kind >= 18|\[0\] != 'u'" broker codec handlers)

while IFS= read -r hit; do
    fail "cites a document outside the repository: $hit"
done < <(grep -rHnE 'BRIEF|STYLE:' --include=*.c --include=*.h --include=*.md --include=*.py \
    --include=*.sh broker codec ring handlers client bench tests docs README.md |
    grep -v '^tests/lint/layering.sh:')

[ $bad -eq 0 ] && echo "layering: ok"
exit $bad
