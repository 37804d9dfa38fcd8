#!/usr/bin/env python3
"""Mid-stream resume over the wire: the release gateway binary (`x-llm-resume: on`) in front
of the mock server binary on the chaos faults, where the three providers differ in how they
take a prefill: Alpha continues it, Beta answers it from scratch (as OpenAI's models do),
Gamma refuses it with a 400. 1,000 streaming calls, 32 in flight, each answer checked token
by token (the mock's answer to a request is consecutive words of its passage: see `wire.py`).

    python3 benches/resume-wire.py [CALLS]       (builds both release binaries; ~2 minutes)

Prints, straight to the mock server, through the gateway with resume off and with it on:
succeeded (a finish reason and exactly the mock's answer), corrupted (a finish reason on an
answer that is not exactly the mock's), cut without a word (no finish reason, no error
event: a truncated body), ended with an error (an error status or event).
"""

import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

import wire

# The mock's passage, read from it once it is up.
WORDS = []

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_TOKENS = 24


def scenario():
    faults = {
        "status": [{"code": c, "rate": 0.01, "retry_after_s": 1 if c in (429, 503) else None}
                   for c in (429, 500, 502, 503)],
        "reset_before_headers": 0.02,
        "hang_after_headers": 0.005,
        "midstream_error": 0.03,
        "midstream_error_eof": 0.03,
        "truncate": 0.03,
        "hang_midstream": 0.005,
        "error_200": 0.01,
    }
    ttft = {"kind": "lognormal", "p50_ms": 200.0, "p99_ms": 800.0, "cap_ms": 5000.0}
    gap = {"kind": "fixed", "ms": 20.0}

    def provider(name, **kw):
        p = {"name": name, "slug": name.lower(), "weight": 1.0, "ttft": ttft, "gap": gap,
             "faults": faults}
        p.update(kw)
        return p

    return {
        "seed": 11,
        "providers": [
            provider("Alpha"),
            provider("Beta", prefill_from_scratch=True),
            provider("Gamma", refuses_prefill=True),
        ],
    }




def stream(host, port, path, body, headers, timeout=60):
    """One streaming call: (status, text, finished, error_event)."""
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request("POST", path, body=json.dumps(body), headers=headers)
        r = c.getresponse()
        if r.status != 200:
            r.read()
            return r.status, "", False, True
        text, finished, error = "", False, False
        buf = b""
        while True:
            chunk = r.read1(65536) if hasattr(r, "read1") else r.read(65536)
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
                        error = True
                    for ch in v.get("choices", []):
                        text += (ch.get("delta") or {}).get("content") or ""
                        if ch.get("finish_reason") and ch.get("finish_reason") != "error":
                            finished = True
        return 200, text, finished, error
    except (OSError, http.client.HTTPException, json.JSONDecodeError):
        return 0, "", False, True
    finally:
        c.close()


def run(calls, host, port, path, headers, label):
    results = []
    lock = threading.Lock()
    idx = iter(range(calls))

    def worker():
        while True:
            with lock:
                i = next(idx, None)
            if i is None:
                return
            body = {"model": "mock/echo", "stream": True, "max_tokens": N_TOKENS,
                    "messages": [{"role": "user", "content": f"resume {label} {i}"}]}
            r = stream(host, port, path, body, headers)
            with lock:
                results.append(r)

    threads = [threading.Thread(target=worker) for _ in range(32)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = sum(1 for s, text, fin, err in results if s == 200 and not err and fin and wire.is_answer(text, N_TOKENS, WORDS))
    corrupted = sum(1 for s, text, fin, err in results if fin and not err and not wire.is_answer(text, N_TOKENS, WORDS))
    cut = sum(1 for s, text, fin, err in results if s == 200 and not fin and not err)
    errored = sum(1 for s, text, fin, err in results if err)
    print(f"{label:<24} {ok / calls * 100:6.1f} % succeeded, {corrupted} corrupted (complete "
          f"but wrong), {cut} cut without a word, {errored} ended with an error "
          f"({time.time() - t0:.0f} s)")


def main():
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "llm-layers-gateway", "-p",
                    "llm-layers-mock"], cwd=ROOT, check=True)
    tmp = tempfile.mkdtemp()
    path = os.path.join(tmp, "scenario.json")
    with open(path, "w") as f:
        json.dump(scenario(), f)
    mock_port, gw_port, off_port = wire.free_port(), wire.free_port(), wire.free_port()
    mock = subprocess.Popen([os.path.join(ROOT, "target/release/llm-layers-mock"), "--scenario",
                             path, "--listen", f"127.0.0.1:{mock_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = dict(os.environ, OPENROUTER_API_KEY="sk-or-v1-wire",
               OPENROUTER_BASE_URL=f"http://127.0.0.1:{mock_port}/api/v1", RUST_LOG="error")
    gws = [subprocess.Popen([os.path.join(ROOT, "target/release/llm-gateway"), "--listen",
                             f"127.0.0.1:{p}"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL) for p in (gw_port, off_port)]
    try:
        time.sleep(1.5)
        WORDS[:] = wire.mock_words(mock_port)
        auth = {"content-type": "application/json", "authorization": "Bearer sk-or-v1-wire"}
        run(calls, "127.0.0.1", mock_port, "/api/v1/chat/completions", auth, "straight to the mock")
        run(calls, "127.0.0.1", off_port, "/v1/chat/completions",
            dict(auth, **{"x-llm-resume": "off"}), "gateway, resume off")
        run(calls, "127.0.0.1", gw_port, "/v1/chat/completions",
            dict(auth, **{"x-llm-resume": "on"}), "gateway, resume on")
    finally:
        for p in gws + [mock]:
            p.terminate()
            p.wait()


if __name__ == "__main__":
    sys.exit(main())
