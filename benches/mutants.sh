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
  crates/core/src/classify.rs
  crates/core/src/decode.rs
  crates/core/src/decode/head.rs
  crates/core/src/sse.rs
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
  crates/coalesce/src/flight.rs
  crates/redis/src/limits.rs
  crates/gateway/src/keys.rs
  crates/gateway/src/keys/auth.rs
  crates/gateway/src/bounds.rs
)

command -v cargo-mutants >/dev/null || cargo install --locked cargo-mutants
if [[ "${1:-}" ]]; then
  mapfile -t FILES < <(printf '%s\n' "${FILES[@]}" | grep -- "$1")
fi
# The gateway's integration tests start servers (hours for every mutant): its files are
# tried against its own unit tests and the tests of keys, bounds and configuration.
others=()
gateway=()
for f in "${FILES[@]}"; do
  case $f in
    crates/gateway/*) gateway+=("$f") ;;
    *) others+=("$f") ;;
  esac
done

start=$(date +%s)
# Redis tests start their own redis-server when one is installed; without it they are skipped,
# and the Redis mutants would all survive: install it first.
command -v redis-server >/dev/null || { echo "mutants: install redis-server first" >&2; exit 2; }
export LLM_LAYERS_REQUIRE_REDIS=1
# One run of cargo-mutants: its output directory, its extra args, `--`, the files.
run() {
  local out=$1
  shift
  local -a extra=() files=()
  while [[ $1 != -- ]]; do extra+=("$1"); shift; done
  shift
  for f in "$@"; do files+=(--file "$f"); done
  [[ ${#files[@]} -gt 0 ]] || return 0
  mkdir -p "$out"
  ran+=("$out")
  # --iterate: mutants caught by an earlier run (same source) are not tried again.
  # Debug impls are left out: what they print decides nothing.
  cargo mutants --exclude-re 'impl (std::)?(fmt::)?Debug for' \
    --workspace --iterate --output "$out" --timeout 120 --build-timeout 600 --no-shuffle \
    "${extra[@]}" "${files[@]}" || true
}
ran=()
run target/mutants -- "${others[@]}"
run target/mutants-gateway --cargo-test-arg=--lib --cargo-test-arg=--test=keys \
  --cargo-test-arg=--test=abuse --cargo-test-arg=--test=config -- "${gateway[@]}"
secs=$(( $(date +%s) - start ))

# The outcomes of the runs made now (an earlier run's of the other group are not counted).
count() { for d in "${ran[@]}"; do cat "$d/mutants.out/$1" 2>/dev/null || true; done | wc -l; }
missed=$(mktemp)
for d in "${ran[@]}"; do cat "$d/mutants.out/missed.txt" 2>/dev/null || true; done > "$missed"
explained=benches/mutants-explained.txt
# A line of the explained list is "<file>: <mutation>  # why", the mutant as cargo-mutants
# names it without its line and column (which move with every edit above it).
strip() { sed -E 's/^([^:]+):[0-9]+:[0-9]+: /\1: /'; }
unexplained=$(strip < "$missed" | grep -v -x -F \
  -f <(sed -e 's/  #.*$//' -e '/^#/d' -e '/^$/d' "$explained") || true)
caught=$(count caught.txt)
unviable=$(count unviable.txt)
timeout=$(count timeout.txt)
echo "mutants: caught $caught, missed $(wc -l < "$missed") (explained" \
  "$(( $(wc -l < "$missed") - $(printf '%s' "$unexplained" | grep -c . || true) )))," \
  "timeout $timeout, unviable $unviable; ${secs} s"
if [[ -n "$unexplained" ]]; then
  echo "unexplained survivors:" >&2
  echo "$unexplained" >&2
  exit 1
fi
