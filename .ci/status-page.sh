#!/usr/bin/env bash
# The status page as a person sees it: the gateway on its mock's fat_tail preset under load,
# headless Chromium renders /status (1280x800 screenshot, rendered DOM), and the DOM must show
# the mock's providers with the slow one marked slow, a learned order, TTFT sparklines and the
# tenant's calls. Installs Chromium when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/status-page
mkdir -p "$out"

browser=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$browser" ]; then
    echo "installing chromium (Debian package)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq chromium >/dev/null
    browser=$(command -v chromium)
fi

cargo build -q -p llm-layers-gateway --bin llm-gateway
log="$out/gateway.log"
target/debug/llm-gateway --listen 127.0.0.1:0 --mock-preset fat_tail --mock-time-scale 0.02 >"$log" 2>&1 &
gw=$!
trap 'kill $gw 2>/dev/null || true' EXIT
addr=""
for _ in $(seq 1 100); do
    addr=$(sed -n 's/^llm-layers gateway on http:\/\/\([^ ]*\).*/\1/p' "$log" | head -1)
    [ -n "$addr" ] && break
    sleep 0.1
done
[ -n "$addr" ] || { echo "the gateway did not start"; cat "$log"; exit 1; }

# Load: 300 whole answers, 16 at a time.
seq 1 300 | xargs -P 16 -I{} curl -s -o /dev/null -w '%{http_code}\n' \
    "http://$addr/v1/chat/completions" -H 'content-type: application/json' -H 'x-tenant: acme' \
    -d '{"model":"mock/echo","max_tokens":4,"messages":[{"role":"user","content":"status {}"}]}' \
    >"$out/codes.txt"
ok=$(grep -c '^200$' "$out/codes.txt" || true)
echo "load: $ok of 300 answered 200"
# fat_tail has no faults: every call of the load is answered.
[ "$ok" -eq 300 ] || { echo "load: only $ok of 300 answered 200"; sort "$out/codes.txt" | uniq -c; exit 1; }

flags=(--headless --no-sandbox --disable-gpu --disable-dev-shm-usage --hide-scrollbars
       --window-size=1280,800 --virtual-time-budget=5000)
"$browser" "${flags[@]}" --screenshot="$out/status.png" "http://$addr/status" >/dev/null 2>&1
"$browser" "${flags[@]}" --dump-dom "http://$addr/status" >"$out/status.html" 2>/dev/null

fail=0
for p in Alpha Beta Gamma Sloth; do
    grep -q "data-provider=\"$p\"" "$out/status.html" || { echo "missing provider $p"; fail=1; }
done
grep -q 'class="slow" data-provider="Sloth"' "$out/status.html" \
    || { echo "Sloth is not shown as slow"; fail=1; }
grep -q 'learned order: alpha\|learned order: beta\|learned order: gamma' "$out/status.html" \
    || { echo "no learned order shown"; fail=1; }
grep -q '<svg class="spark"' "$out/status.html" || { echo "no TTFT sparkline"; fail=1; }
grep -q '<td>acme</td>' "$out/status.html" || { echo "no tenant row"; fail=1; }
[ -s "$out/status.png" ] || { echo "no screenshot"; fail=1; }
if [ "$fail" != 0 ]; then
    sed -n '1,200p' "$out/status.html"
    echo "status page: FAILED"
    exit 1
fi
echo "status page: providers shown, Sloth marked slow, screenshot at $out/status.png"
