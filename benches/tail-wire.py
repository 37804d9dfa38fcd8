#!/usr/bin/env python3
"""The tail as a user sees it: the release gateway binary with its defaults, over HTTP, in
front of the mock server binary with OpenRouter's fat tail, 16 calls in flight, streaming;
against the same mock straight.

The upstream: three providers (Alpha half of the traffic, TTFT p50 45 ms / p99 250 ms; Beta
30 %, 70 / 600 ms; Gamma 20 %, 200 / 2,200 ms), overall TTFT p50/p95/p99 in the ratio
1.2 s / 8 s / 20 s of OpenRouter's (scaled so the fastest provider's p50 is 45 ms). The
oracle (every call to Alpha, hedged at its p95 within 5 % more requests) is computed from
Alpha's distribution.

Rows, each a fresh gateway process, per mock seed (medians over the seeds):
- steady: 200 warm-up calls, then 2,000;
- cold, published stats accurate: 16 warm-up calls, then the first 400;
- cold, published stats wrong (fastest and slowest swapped): the same.
Upstream requests per call count every request the mock got during the row, warm-up included,
over every call made.

    python3 benches/tail-wire.py [SEEDS]     (builds both release binaries; ~6 minutes for 5 seeds)
"""

import http.client
import json
import math
import os
import random
import subprocess
import sys
import tempfile

import wire

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = "sk-or-v1-wire"
INFLIGHT = 16
TOKENS = 4
Z99 = 2.326347874
Z95 = 1.644853627
# (name, weight, TTFT p50 ms, TTFT p99 ms)
PROVIDERS = [("Alpha", 0.5, 45.0, 250.0), ("Beta", 0.3, 70.0, 600.0),
             ("Gamma", 0.2, 200.0, 2200.0)]


def dist(p50, p99):
    return {"kind": "lognormal", "p50_ms": p50, "p99_ms": p99, "cap_ms": 60000.0}


def scenario(seed, wrong):
    providers = []
    for i, (name, weight, p50, p99) in enumerate(PROVIDERS):
        p = {"name": name, "slug": name.lower(), "weight": weight, "ttft": dist(p50, p99),
             "gap": {"kind": "fixed", "ms": 2.0}}
        if wrong:
            # Each publishes its mirror's TTFT in the ranking: the slowest looks fastest.
            _, _, m50, m99 = PROVIDERS[len(PROVIDERS) - 1 - i]
            p["published_ttft"] = dist(m50, m99)
        providers.append(p)
    return {"seed": seed, "providers": providers}


def quantile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def oracle(n=400000, seed=7):
    """TTFT p95 and p99 of every call to Alpha, hedged at Alpha's p95 (a fresh draw)."""
    rng = random.Random(seed)
    _, _, p50, p99 = PROVIDERS[0]
    sigma = math.log(p99 / p50) / Z99
    draw = lambda: p50 * math.exp(sigma * rng.gauss(0, 1))
    delay = p50 * math.exp(sigma * Z95)
    xs = []
    for _ in range(n):
        x = draw()
        xs.append(x if x <= delay else min(x, delay + draw()))
    return quantile(xs, 0.95), quantile(xs, 0.99)


def stream_ttft(conn, path, i, label):
    """One streaming call on a kept-alive connection: its TTFT in ms, or None."""
    body = {"model": "mock/echo", "stream": True, "max_tokens": TOKENS,
            "messages": [{"role": "user", "content": f"{label} {i}"}]}
    return wire.stream_ttft(conn, path, body, {"content-type": "application/json",
                                               "authorization": f"Bearer {KEY}"})


def run(port, path, calls, label):
    """`calls` streaming calls at INFLIGHT in flight: the TTFTs in ms (None: failed)."""
    return wire.pool(port, calls, INFLIGHT, lambda conn, i: stream_ttft(conn, path, i, label))


def summary(ttfts):
    ok = [t for t in ttfts if t is not None]
    return {"ok": len(ok) / len(ttfts), "p50": quantile(ok, 0.5), "p95": quantile(ok, 0.95),
            "p99": quantile(ok, 0.99)}


def one_row(seed, wrong, warm, calls, tmp):
    """Direct and through a fresh gateway, on a fresh mock of `seed`."""
    path = os.path.join(tmp, f"scenario-{seed}-{wrong}.json")
    with open(path, "w") as f:
        json.dump(scenario(seed, wrong), f)
    mock_port, gw_port = wire.free_port(), wire.free_port()
    mock = subprocess.Popen([os.path.join(ROOT, "target/release/llm-layers-mock"), "--scenario",
                             path, "--listen", f"127.0.0.1:{mock_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = dict(os.environ, OPENROUTER_API_KEY=KEY, RUST_LOG="error",
               OPENROUTER_BASE_URL=f"http://127.0.0.1:{mock_port}/api/v1")
    gw = subprocess.Popen([os.path.join(ROOT, "target/release/llm-gateway"), "--listen",
                           f"127.0.0.1:{gw_port}"], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    try:
        wire.wait_for(mock_port, "/_mock/counters")
        wire.wait_for(gw_port)
        direct = summary(run(mock_port, "/api/v1/chat/completions", calls, f"direct {seed}"))
        up0 = wire.counters(mock_port)
        run(gw_port, "/v1/chat/completions", warm, f"warm {seed}")
        through = summary(run(gw_port, "/v1/chat/completions", calls, f"gateway {seed}"))
        through["upstream"] = (wire.counters(mock_port) - up0) / (warm + calls)
        if os.environ.get("TAIL_WIRE_METRICS"):
            # What sent the extra requests (hedges, races, retries), from the gateway itself.
            c = http.client.HTTPConnection("127.0.0.1", gw_port, timeout=5)
            c.request("GET", "/metrics")
            text = c.getresponse().read().decode()
            c.close()
            for line in text.splitlines():
                if line.startswith(("llm_hedge", "llm_retry", "llm_router", "llm_breaker_probe")):
                    print(f"    {line}")
        return direct, through
    finally:
        for p in (gw, mock):
            p.terminate()
            p.wait()


ROWS = [
    ("steady (2,000 calls after 200)", False, 200, 2000),
    ("cold, accurate stats (400 after 16)", False, 16, 400),
    ("cold, wrong stats (400 after 16)", True, 16, 400),
]


def main():
    seeds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "llm-layers-gateway", "-p",
                    "llm-layers-mock"], cwd=ROOT, check=True)
    o95, o99 = oracle()
    tmp = tempfile.mkdtemp()
    print(f"gateway binary (defaults) vs straight to the mock; {INFLIGHT} in flight, streaming; "
          f"medians over {seeds} seeds")
    print(f"{'row':<38} {'p95 ×':>6} {'p99 ×':>6} {'req/call':>8}  {'share of oracle':>16}  "
          f"{'gateway p50/p95/p99 ms':>24}  {'direct p50/p95/p99 ms':>22}  ok")
    for label, wrong, warm, calls in ROWS:
        per_seed = [one_row(seed, wrong, warm, calls, tmp) for seed in range(42, 42 + seeds)]
        med = lambda f: quantile([f(d, t) for d, t in per_seed], 0.5)
        x95, x99 = med(lambda d, t: d["p95"] / t["p95"]), med(lambda d, t: d["p99"] / t["p99"])
        ox95, ox99 = med(lambda d, t: d["p95"] / o95), med(lambda d, t: d["p99"] / o99)
        up = med(lambda d, t: t["upstream"])
        g = "/".join(f"{med(lambda d, t, q=q: t[q]):.0f}" for q in ("p50", "p95", "p99"))
        dd = "/".join(f"{med(lambda d, t, q=q: d[q]):.0f}" for q in ("p50", "p95", "p99"))
        ok = min(t["ok"] for _, t in per_seed)
        print(f"{label:<38} {x95:6.2f} {x99:6.2f} {up:8.3f}  {x95 / ox95 * 100:6.0f} % {x99 / ox99 * 100:6.0f} %  "
              f"{g:>24}  {dd:>22}  {ok * 100:.1f} %", flush=True)
    print(f"oracle (every call to Alpha, hedged at its p95): p95 {o95:.0f} ms, p99 {o99:.0f} ms")


if __name__ == "__main__":
    sys.exit(main())
