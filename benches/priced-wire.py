#!/usr/bin/env python3
"""Speed at a price as a user sees it: the release gateway binary (its defaults, plus a tier
`thrifty` whose objective is `cheapest` within a TTFT p95 of 150 ms) over HTTP, in front of
the mock server binary on its `priced` preset at time scale 0.1 (Swift: fastest, 4× the
price; Steady: mid-priced, p95 ≈ 110 ms; Thrifty: a third of Steady's price, p95 ≈ 400 ms).

Rows, each on a fresh mock and gateway, 16 calls in flight, streaming, 200 warm-up calls then
2,000 measured:
- straight to the mock (the upstream's own routing, by weight);
- the gateway, `mock/echo` (the learned order: fastest);
- the gateway, `tier:thrifty` (cheapest within the SLA);
- the oracle: straight to the mock, every call pinned to Steady (`provider.order`, no
  fallbacks), unhedged: what knowing every endpoint's distribution and price buys.
Cost is what the mock billed during the measured calls (hedges and cancelled attempts
included), per 1,000 calls.

    python3 benches/priced-wire.py     (builds both release binaries; ~1 minute)
"""

import json
import os
import subprocess
import sys
import tempfile

import wire

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = "sk-or-v1-wire"
INFLIGHT = 16
SCALE = 0.1
SLA_MS = 150
WARM, CALLS = 200, 2000
TIERS = {"tiers": [{"name": "thrifty", "models": ["mock/echo"],
                    "sla": {"ttft_ms": SLA_MS, "ttft_quantile": 0.95},
                    "objective": "cheapest"}]}


def mock_state(port):
    return wire.mock_get(port, "/_mock/counters", KEY)


def run(port, path, model, calls, label, pin=False):
    headers = {"content-type": "application/json", "authorization": f"Bearer {KEY}"}

    def one(conn, i):
        body = {"model": model, "stream": True, "max_tokens": 4,
                "messages": [{"role": "user", "content": f"{label} {i}"}]}
        if pin:
            body["provider"] = {"order": ["steady"], "allow_fallbacks": False}
        return wire.stream_ttft(conn, path, body, headers)

    return wire.pool(port, calls, INFLIGHT, one)


def quantile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def row(label, gateway, model, pin, tmp):
    mock_port, gw_port = wire.free_port(), wire.free_port()
    mock = subprocess.Popen([os.path.join(ROOT, "target/release/llm-layers-mock"), "--preset",
                             "priced", "--time-scale", str(SCALE), "--seed", "42", "--listen",
                             f"127.0.0.1:{mock_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [mock]
    try:
        wire.wait_for(mock_port, "/_mock/counters")
        port, path = mock_port, "/api/v1/chat/completions"
        if gateway:
            tiers = os.path.join(tmp, "tiers.json")
            with open(tiers, "w") as f:
                json.dump(TIERS, f)
            env = dict(os.environ, OPENROUTER_API_KEY=KEY, RUST_LOG="error",
                       OPENROUTER_BASE_URL=f"http://127.0.0.1:{mock_port}/api/v1")
            procs.append(subprocess.Popen(
                [os.path.join(ROOT, "target/release/llm-gateway"), "--listen",
                 f"127.0.0.1:{gw_port}", "--tiers", tiers], env=env,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wire.wait_for(gw_port)
            port, path = gw_port, "/v1/chat/completions"
        run(port, path, model, WARM, f"warm {label}", pin)
        before = mock_state(mock_port)
        ttfts = run(port, path, model, CALLS, label, pin)
        after = mock_state(mock_port)
        ok = [t for t in ttfts if t is not None]
        to = {s: after["requests_to"][s] - before["requests_to"][s] for s in after["requests_to"]}
        total = max(1, sum(to.values()))
        return {
            "label": label, "ok": len(ok) / len(ttfts),
            "p50": quantile(ok, 0.5), "p95": quantile(ok, 0.95), "p99": quantile(ok, 0.99),
            "within": sum(1 for t in ok if t <= SLA_MS) / len(ttfts),
            "cost": (after["billed_usd"] - before["billed_usd"]) * 1000 / CALLS,
            "req": (after["requests"] - before["requests"]) / CALLS,
            "to": "/".join(f"{100 * to[s] / total:.1f}" for s in ("swift", "steady", "thrifty")),
        }
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait()


def main():
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "llm-layers-gateway", "-p",
                    "llm-layers-mock"], cwd=ROOT, check=True)
    tmp = tempfile.mkdtemp()
    rows = [
        row("straight to the mock", False, "mock/echo", False, tmp),
        row("gateway, mock/echo (fastest)", True, "mock/echo", False, tmp),
        row("gateway, tier:thrifty (cheapest in SLA)", True, "tier:thrifty", False, tmp),
        row("oracle (pinned to Steady, unhedged)", False, "mock/echo", True, tmp),
    ]
    oracle = rows[-1]["cost"]
    print(f"priced preset at time scale {SCALE}, SLA TTFT p95 <= {SLA_MS} ms; {INFLIGHT} in "
          f"flight, {CALLS} streaming calls after {WARM}")
    print(f"{'row':<42} {'p50':>6} {'p95':>6} {'p99':>6} {'in SLA':>7} {'ok':>6} {'req/call':>8} "
          f"{'$/1k calls':>10} {'x oracle':>8}  Swift/Steady/Thrifty %")
    for r in rows:
        print(f"{r['label']:<42} {r['p50']:6.1f} {r['p95']:6.1f} {r['p99']:6.1f} "
              f"{r['within'] * 100:6.1f}% {r['ok'] * 100:5.1f}% {r['req']:8.3f} "
              f"{r['cost']:10.4f} {r['cost'] / oracle:8.3f}  {r['to']}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
