#!/usr/bin/env python3
"""The fault rows over the wire: the release gateway binary with its defaults, in front of
the mock server binary in real time, against the same mock straight, from a client that
gives up after 30 s (as the official SDKs' default request timeout is counted). Each answer
is checked token by token (the mock's answer to a request is consecutive words of its passage: see `wire.py`).

    python3 benches/faults-wire.py [ROWS]      (builds both release binaries; ~6 minutes)

ROWS is a comma-separated subset of: dead, storm, chaos-whole, chaos-resume, hanging.

For each row and path: succeeded, failed, at the client's 30 s timeout, upstream requests
per call (all, and for the calls made after the first second), TTFT p50 of the successes,
and the slowest failure (all, and after the first second).
"""

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time

import wire

# The mock's passage, read from it once it is up.
WORDS = []

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIENT_TIMEOUT = 30.0






def call(port, path, body, headers, stream):
    """(ok, ttft, elapsed, timed_out)."""
    t0 = time.time()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT)
    try:
        c.request("POST", path, body=json.dumps(body), headers=headers)
        r = c.getresponse()
        ttft = time.time() - t0
        if r.status != 200:
            r.read()
            return False, ttft, time.time() - t0, False
        if not stream:
            v = json.loads(r.read())
            text = v["choices"][0]["message"]["content"] or ""
            fin = bool(v["choices"][0].get("finish_reason"))
            return fin and wire.is_answer(text, body["max_tokens"], WORDS), ttft, time.time() - t0, False
        text, fin, err, buf = "", False, False, b""
        while True:
            chunk = r.read1(65536)
            if not chunk:
                break
            buf += chunk.replace(b"\r\n", b"\n")
            while b"\n\n" in buf:
                ev, buf = buf.split(b"\n\n", 1)
                for line in ev.split(b"\n"):
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        continue
                    v = json.loads(data)
                    if "error" in v:
                        err = True
                    for ch in v.get("choices", []):
                        d = ch.get("delta") or {}
                        if d.get("content"):
                            if not text:
                                ttft = time.time() - t0
                            text += d["content"]
                        if ch.get("finish_reason") and ch.get("finish_reason") != "error":
                            fin = True
        ok = fin and not err and wire.is_answer(text, body["max_tokens"], WORDS)
        return ok, ttft, time.time() - t0, False
    except socket.timeout:
        return False, None, time.time() - t0, True
    except (OSError, http.client.HTTPException, json.JSONDecodeError, KeyError):
        return False, None, time.time() - t0, False
    finally:
        c.close()




def run(label, port, path, mock_port, calls, inflight, stream, headers, pace=0.0):
    results = []
    lock = threading.Lock()
    idx = iter(range(calls))
    t_start = time.time()
    late_from = {}
    up0 = wire.counters(mock_port)

    def worker():
        while True:
            with lock:
                i = next(idx, None)
                if i is None:
                    return
                if "i" not in late_from and time.time() - t_start >= 1.0:
                    late_from["i"] = i
                    late_from["up"] = wire.counters(mock_port)
            if pace:
                time.sleep(pace)
            body = {"model": "mock/echo", "stream": stream, "max_tokens": 8,
                    "messages": [{"role": "user", "content": f"{label} {time.time()} {i}"}]}
            r = call(port, path, body, headers, stream)
            with lock:
                results.append((i,) + r)

    threads = [threading.Thread(target=worker) for _ in range(inflight)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    up = wire.counters(mock_port) - up0
    ok = [r for r in results if r[1]]
    failed = [r for r in results if not r[1]]
    timed_out = sum(1 for r in results if r[4])
    ttfts = sorted(r[2] for r in ok if r[2] is not None)
    p50 = ttfts[len(ttfts) // 2] * 1000 if ttfts else float("nan")
    first_late = late_from.get("i", calls)
    late_calls = calls - first_late
    late_up = wire.counters(mock_port) - late_from.get("up", wire.counters(mock_port))
    slowest = max((r[3] for r in failed), default=0.0)
    late_slowest = max((r[3] for r in failed if r[0] >= first_late), default=0.0)
    late_slow = sum(1 for r in failed if r[0] >= first_late and r[3] > 0.1)
    print(f"  {label:<26} ok {len(ok) / calls * 100:6.1f} %  failed {len(failed):4}  "
          f"at 30 s {timed_out:3}  upstream/call {up / calls:5.2f} "
          f"(after 1 s {late_up / max(late_calls, 1):5.2f})  TTFT p50 {p50:7.0f} ms  "
          f"slowest failure {slowest:5.2f} s (after 1 s {late_slowest:5.2f} s, "
          f"{late_slow} over 100 ms)")


ROWS = {
    # name: (preset, calls, in flight, stream, resume, pace)
    "dead": ("dead_throttled", 300, 16, False, False, 0.05),
    "storm": ("rate_limited", 1000, 16, True, False, 0.0),
    "chaos-whole": ("chaos", 1000, 16, False, False, 0.0),
    "chaos-resume": ("chaos", 1000, 16, True, True, 0.0),
    "hanging": ("hanging", 600, 16, False, False, 0.0),
}


def main():
    wanted = sys.argv[1].split(",") if len(sys.argv) > 1 else list(ROWS)
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "llm-layers-gateway", "-p",
                    "llm-layers-mock"], cwd=ROOT, check=True)
    for name in wanted:
        preset, calls, inflight, stream, resume, pace = ROWS[name]
        mock_port, gw_port = wire.free_port(), wire.free_port()
        mock = subprocess.Popen([os.path.join(ROOT, "target/release/llm-layers-mock"),
                                 "--preset", preset, "--seed", "42",
                                 "--listen", f"127.0.0.1:{mock_port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        env = dict(os.environ, OPENROUTER_API_KEY="sk-or-v1-wire",
                   OPENROUTER_BASE_URL=f"http://127.0.0.1:{mock_port}/api/v1", RUST_LOG="error")
        gw = subprocess.Popen([os.path.join(ROOT, "target/release/llm-gateway"), "--listen",
                               f"127.0.0.1:{gw_port}"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
        try:
            time.sleep(1.0)
            WORDS[:] = wire.mock_words(mock_port)
            print(f"{name}: preset {preset}, {calls} {'streaming' if stream else 'whole'} calls, "
                  f"{inflight} in flight{', x-llm-resume: on' if resume else ''}")
            auth = {"content-type": "application/json", "authorization": "Bearer sk-or-v1-wire"}
            run("straight to the mock", mock_port, "/api/v1/chat/completions", mock_port, calls,
                inflight, stream, auth, pace)
            h = dict(auth, **({"x-llm-resume": "on"} if resume else {}))
            run("through the gateway", gw_port, "/v1/chat/completions", mock_port, calls,
                inflight, stream, h, pace)
        finally:
            for p in (gw, mock):
                p.terminate()
                p.wait()


if __name__ == "__main__":
    sys.exit(main())
