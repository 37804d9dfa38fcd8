#!/usr/bin/env bash
# User-space instructions per request of each load target (the bare proxy, the gateway with
# no layer, the gateway), counted by valgrind's callgrind in the target's own process while
# N keep-alive requests go through it one after another (whole answers, then streams) to the
# load bench's mock. Deterministic for one binary, where CPU time on this VM is not: the
# figure to compare commits by. Kernel time (the socket calls, about half of a request's CPU
# on this VM) is not in it.
#
#   bash benches/gateway-instructions.sh [N]      (N = 400; needs valgrind and python3)
#   LOAD_BIN=path/to/load bash benches/gateway-instructions.sh   (another build, e.g. an older commit's)
#   COUNT=syscalls bash benches/gateway-instructions.sh [N]   (system calls per request
#       instead, every thread of the target, by `strace -c -f`; needs strace)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-400}
bin=${LOAD_BIN:-target/release/load}
if [ -z "${LOAD_BIN:-}" ]; then
  cargo build --release -p llm-layers-bench --bin load 2>/dev/null
fi
tmp=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

# N sequential requests on one keep-alive connection; every answer must be a 200.
cat >"$tmp/client.py" <<'EOF'
import http.client, json, sys
n, stream, port = int(sys.argv[1]), sys.argv[2] == "true", int(sys.argv[3])
c = http.client.HTTPConnection("127.0.0.1", port)
for i in range(n):
    body = json.dumps({"model": "openai/gpt-4o-mini", "stream": stream,
                       "messages": [{"role": "user", "content": f"load {i}"}]})
    c.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    r = c.getresponse()
    data = r.read()
    assert r.status == 200 and (b"[DONE]" in data if stream else b'"stop"' in data), data[:200]
EOF

wait_for() { # file pattern -> the word after it
  for _ in $(seq 1 300); do
    if grep -q "$2" "$1" 2>/dev/null; then
      grep -o "$2[^ ]*" "$1" | head -1 | sed "s|$2||"
      return
    fi
    sleep 0.2
  done
  echo "no '$2' in $1" >&2
  exit 1
}

"$bin" --child-mock healthy >"$tmp/mock.out" 2>&1 &
pids+=($!)
mock=$(wait_for "$tmp/mock.out" "ready ")

# target name, what it prints before its address, then the command that serves on a
# loopback port
count=${COUNT:-instructions}
measure() {
  local name=$1 marker=$2
  shift 2
  if [ "$count" = syscalls ]; then
    OPENROUTER_BASE_URL=$mock OPENROUTER_API_KEY=sk-or-v1-load RUST_LOG=warn \
      "$@" >"$tmp/$name.out" 2>&1 &
  else
    OPENROUTER_BASE_URL=$mock OPENROUTER_API_KEY=sk-or-v1-load RUST_LOG=warn \
      valgrind --tool=callgrind --callgrind-out-file="$tmp/$name.cg" "$@" >"$tmp/$name.out" 2>&1 &
  fi
  local pid=$!
  pids+=($pid)
  local addr
  addr=$(wait_for "$tmp/$name.out" "$marker")
  local port=${addr##*:}
  port=${port%%/*}
  python3 "$tmp/client.py" 50 false "$port" # warm: connections, the latency store
  local out=()
  for stream in false true; do
    if [ "$count" = syscalls ]; then
      strace -c -f -q -p "$pid" -o "$tmp/$name.st" &
      local tracer=$!
      sleep 1 # attached to every thread
      python3 "$tmp/client.py" "$n" "$stream" "$port"
      kill -INT "$tracer"; sleep 0.5
      wait "$tracer" 2>/dev/null || true
      local calls
      calls=$(awk '$NF == "total" { print $4 }' "$tmp/$name.st")
      out+=("$(python3 -c "print(f'{$calls / $n:.1f}')")")
      continue
    fi
    callgrind_control -z "$pid" >/dev/null 2>&1
    python3 "$tmp/client.py" "$n" "$stream" "$port"
    callgrind_control -d "$pid" >/dev/null 2>&1
    local dump
    dump=$(ls -t "$tmp/$name.cg".* | head -1)
    local total
    total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
    out+=($((total / n)))
    rm -f "$dump"
  done
  kill "$pid" 2>/dev/null || true
  printf '%-12s %14s %14s\n' "$name" "${out[0]}" "${out[1]}"
}

if [ "$count" = syscalls ]; then
  printf 'system calls per request (every thread), %s requests in a row on one connection\n' "$n"
else
  printf 'user-space instructions per request, %s requests in a row on one connection\n' "$n"
fi
printf '%-12s %14s %14s\n' target whole stream
measure "bare proxy" "ready http://" "$bin" --child-proxy "$mock"
measure "leaf only" "gateway on http://" "$bin" --child-gateway --listen 127.0.0.1:0 --stack leaf
measure gateway "gateway on http://" "$bin" --child-gateway --listen 127.0.0.1:0
