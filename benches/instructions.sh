#!/usr/bin/env bash
# Instructions per call each arm of the `overhead` bench adds over the bare service, counted
# by valgrind (deterministic, unlike wall time on a shared VM): the instructions of 2,000
# calls minus those of 0 calls (the same set-up and warm-up), per call.
#
#   bash benches/instructions.sh            (needs valgrind: apt-get install valgrind)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p llm-layers-bench --bench overhead --no-run 2>/dev/null
bin=$(ls -t target/release/deps/overhead-* | grep -v '\.d$' | head -1)
count() { # arm calls -> instructions
  OVERHEAD_ONLY=$1 OVERHEAD_CALLS=$2 valgrind --tool=cachegrind --cache-sim=no \
    --cachegrind-out-file=/dev/null "$bin" 2>&1 | awk '/I *refs:/ { gsub(",", "", $4); print $4 }'
}
per_call() { echo $(( ($(count "$1" 2000) - $(count "$1" 0)) / 2000 )); }
bare=$(per_call bare)
printf '%-12s %12s %12s\n' arm "instr/call" "added"
printf '%-12s %12s %12s\n' bare "$bare" "-"
for arm in timeout retry latency hedge ratelimit breaker router resume full_stack; do
  n=$(per_call "$arm")
  printf '%-12s %12s %12s\n' "$arm" "$n" "$((n - bare))"
done
