#!/usr/bin/env bash
# ab.sh REPS DUR "presets" build-X build-Y ... : interleaved runs; prints per-run lines and medians
REPS=$1; DUR=$2; PRESETS=$3; shift 3
cd /tmp/perf-work
OUT=/tmp/perf-work/ab-$(date +%H%M%S).txt
for p in $PRESETS; do
  for r in $(seq $REPS); do
    for b in "$@"; do
      if [ "$b" = nats ]; then line=$(./run1.sh nats build-new/nexus-bench $DUR -- --preset $p); else line=$(./run1.sh $b/nexusd $b/nexus-bench $DUR -- --preset $p); fi
      echo "$p $b $line" | tee -a $OUT
    done
  done
done
python3 /tmp/perf-work/summ.py $OUT
