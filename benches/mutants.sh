#!/usr/bin/env bash
# Mutation testing over the guards that matter most: does every important check have a test
# that fails without it? cargo-mutants (crates registry) changes one thing at a time (a `<` to
# `<=`, a function body to `Default::default()`, a `&&` to `||`) in a copy of the tree and runs
# the mutated crate's tests; a mutant no test catches is a guard no test holds.
#
#     bash benches/mutants.sh             # every file below (hours on 2 cores: see docs/testing.md)
#     bash benches/mutants.sh ratelimit   # the files whose path contains "ratelimit"
#
# Survivors that are equivalent on purpose (the mutation cannot change behaviour) are listed,
# each with one line of why, in benches/mutants-explained.txt. The script fails when a mutant
# survives that is not in that list. Not run by .ci/run (too slow for every push).
set -euo pipefail
cd "$(dirname "$0")/.."

# The guards: error classification and Retry-After, the continuation seam, retry policy,
# breaker decisions, the rate limiter's admission, refunds and stores, resume's seam,
# coalescing, the Redis scripts, the gateway's keys and bounds.
FILES=(
  crates/core/src/error.rs
  crates/core/src/api_error.rs
  crates/core/src/continuation.rs
  crates/core/src/budget.rs
  crates/retry/src/policy.rs
  crates/retry/src/backoff.rs
  crates/retry/src/waits.rs
  crates/breaker/src/registry/room.rs
  crates/breaker/src/registry/blocked.rs
  crates/ratelimit/src/store.rs
  crates/ratelimit/src/admit.rs
  crates/ratelimit/src/limit.rs
  crates/resume/src/stream.rs
  crates/coalesce/src/lib.rs
  crates/redis/src/limits.rs
  crates/gateway/src/keys.rs
  crates/gateway/src/bounds.rs
)

command -v cargo-mutants >/dev/null || cargo install --locked cargo-mutants
if [[ "${1:-}" ]]; then
  mapfile -t FILES < <(printf '%s\n' "${FILES[@]}" | grep -- "$1")
fi
args=()
for f in "${FILES[@]}"; do args+=(--file "$f"); done

out=target/mutants
mkdir -p "$out"
start=$(date +%s)
# Redis tests start their own redis-server when one is installed; without it they are skipped,
# and the Redis mutants would all survive: install it first.
command -v redis-server >/dev/null || { echo "mutants: install redis-server first" >&2; exit 2; }
export LLM_LAYERS_REQUIRE_REDIS=1
# --iterate: mutants caught by an earlier run (same source) are not tried again.
# Debug impls are left out: what they print decides nothing.
cargo mutants --exclude-re 'impl (std::)?(fmt::)?Debug for' \
  --workspace --iterate --output "$out" --timeout 60 --build-timeout 600 --no-shuffle \
  "${args[@]}" || true
secs=$(( $(date +%s) - start ))

missed="$out/mutants.out/missed.txt"
explained=benches/mutants-explained.txt
touch "$missed"
# A line of the explained list is "<file>: <mutation>  # why", the mutant as cargo-mutants
# names it without its line and column (which move with every edit above it).
strip() { sed -E 's/^([^:]+):[0-9]+:[0-9]+: /\1: /'; }
unexplained=$(strip < "$missed" | grep -v -x -F \
  -f <(sed -e 's/  #.*$//' -e '/^#/d' -e '/^$/d' "$explained") || true)
caught=$(wc -l < "$out/mutants.out/caught.txt" 2>/dev/null || echo 0)
unviable=$(wc -l < "$out/mutants.out/unviable.txt" 2>/dev/null || echo 0)
timeout=$(wc -l < "$out/mutants.out/timeout.txt" 2>/dev/null || echo 0)
echo "mutants: caught $caught, missed $(wc -l < "$missed") (explained" \
  "$(( $(wc -l < "$missed") - $(printf '%s' "$unexplained" | grep -c . || true) )))," \
  "timeout $timeout, unviable $unviable; ${secs} s"
if [[ -n "$unexplained" ]]; then
  echo "unexplained survivors:" >&2
  echo "$unexplained" >&2
  exit 1
fi
