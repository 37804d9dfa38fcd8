#!/usr/bin/env bash
# Instructions per event of each chunk codec arm of the `sse` bench (4,000 OpenRouter-like
# events in 1,460-byte reads), counted by valgrind: one round over the events minus none
# (the same set-up), over 4,000. Deterministic, unlike wall time on a shared VM.
#
#   bash benches/codec-instructions.sh      (needs valgrind: apt-get install valgrind)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p llm-layers-bench --bench sse --no-run 2>/dev/null
bin=$(ls -t target/release/deps/sse-* | grep -v '\.d$' | head -1)
count() { # arm rounds -> instructions
  CODEC_ONLY=$1 CODEC_ROUNDS=$2 valgrind --tool=cachegrind --cache-sim=no \
    --cachegrind-out-file=/dev/null "$bin" 2>&1 | awk '/I *refs:/ { gsub(",", "", $4); print $4 }'
}
printf '%-20s %16s\n' arm "instr/event"
for arm in decode-alone decode-stream encode-serde encode-write-json encode-writer; do
  printf '%-20s %16s\n' "$arm" $(( ($(count "$arm" 1) - $(count "$arm" 0)) / 4000 ))
done
