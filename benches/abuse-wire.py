#!/usr/bin/env python3
"""The abuse rows over the wire: the release gateway binary, its defaults, in front of an
upstream that is not ours (a small OpenRouter-shaped server written here, in Python), and
callers as rude as the real world. Prints one line per figure of docs/security.md.

    python3 benches/abuse-wire.py            (builds the release gateway first; ~1 minute)

Figures:
  memory      RSS growth after 100 calls whose model id is 1 MiB, and the /metrics size
  sockets     of 200 sockets that send a byte of the HTTP/2 preface, or the preface and a
              SETTINGS frame, and then nothing: how many are closed 1 s after the header
              deadline (--header-read-timeout-ms 2000)
  abandoned   a key of 60 a minute (burst 10): 30 streaming calls one after the other, each
              left after 0.3 s: upstream requests against what the limit allows
  tenants     another tenant's 60 calls while one tenant sends moderation-flagged input,
              unaffordable max_tokens, 1 MiB fields and look-alike fields: its success rate,
              and whether either upstream key was retired (/healthz)
"""

import http.server
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import wire

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Upstream(http.server.ThreadingHTTPServer):
    daemon_threads = True
    requests = 0
    by_key = {}
    prompts = set()
    lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *a):
        pass

    def send_json(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path.endswith("/models"):
            self.send_json(200, {"data": [{"id": "mock/echo", "created": 0}]})
        else:
            self.send_json(404, {"error": {"code": 404, "message": "no endpoints"}})

    def do_POST(self):
        n = int(self.headers.get("content-length", "0"))
        body = json.loads(self.rfile.read(n) or b"{}")
        key = self.headers.get("authorization", "")
        with self.server.lock:
            self.server.requests += 1
            self.server.by_key[key] = self.server.by_key.get(key, 0) + 1
        text = json.dumps(body.get("messages", []))
        with self.server.lock:
            self.server.prompts.add(text)
        if "FLAG-ME" in text:
            return self.send_json(403, {"error": {"code": 403, "message": "flagged by moderation",
                                                  "metadata": {"reasons": ["x"]}}})
        asked = max(body.get("max_tokens") or 0, body.get("max_completion_tokens") or 0)
        if asked > 4096:
            return self.send_json(402, {"error": {"code": 402, "message": "requires more credits",
                                                  "metadata": {"limit_source": "openrouter_credits"}}})
        slow = "slow" in text
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        try:
            if slow:
                time.sleep(5)
            for i, tok in enumerate(["hello", " world"]):
                chunk = {"id": "gen-1", "object": "chat.completion.chunk", "created": 1,
                         "model": body.get("model"), "provider": "Py",
                         "choices": [{"index": 0, "delta": {"content": tok}, "finish_reason": None}]}
                self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                self.wfile.flush()
            end = {"id": "gen-1", "object": "chat.completion.chunk", "created": 1,
                   "model": body.get("model"), "provider": "Py",
                   "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
            self.wfile.write(b"data: " + json.dumps(end).encode() + b"\n\ndata: [DONE]\n\n")
        except (BrokenPipeError, ConnectionResetError):
            pass




def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def post(port, key, body, timeout=30, headers=None):
    data = json.dumps(body).encode() if not isinstance(body, bytes) else body
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=data,
                                 method="POST")
    req.add_header("content-type", "application/json")
    req.add_header("authorization", f"Bearer {key}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def get(port, path, key=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if key:
        req.add_header("authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def main():
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "llm-layers-gateway"], cwd=ROOT,
                   check=True)
    up_port = wire.free_port()
    upstream = Upstream(("127.0.0.1", up_port), Handler)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    tmp = tempfile.mkdtemp()
    keys = os.path.join(tmp, "keys.json")
    with open(keys, "w") as f:
        json.dump({"keys": [
            {"tenant": "mallory", "key": "sk-gw-mallory-0000000", "requests_per_minute": 60,
             "max_tokens": 16, "models": ["mock/*"], "allow_routing": True},
            {"tenant": "alice", "key": "sk-gw-alice-000000000"},
            {"tenant": "ops", "key": "sk-gw-ops-00000000000", "admin": True},
        ]}, f)
    config = os.path.join(tmp, "gateway.toml")
    with open(config, "w") as f:
        f.write(f"""[[upstreams]]
name = "py"
base_url = "http://127.0.0.1:{up_port}/api/v1"
keys = [{{ name = "main", key = "sk-py-main-000000000" }}, {{ name = "backup", key = "sk-py-backup-0000000" }}]
""")
    gw_port = wire.free_port()
    env = dict(os.environ, OPENROUTER_API_KEY="sk-unused", RUST_LOG="warn")
    gw = subprocess.Popen([os.path.join(ROOT, "target/release/llm-gateway"), "--listen",
                           f"127.0.0.1:{gw_port}", "--keys", keys, "--config", config,
                           "--header-read-timeout-ms", "2000"],
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                if get(gw_port, "/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        mallory, alice, ops = "sk-gw-mallory-0000000", "sk-gw-alice-000000000", "sk-gw-ops-00000000000"
        hello = {"model": "mock/echo", "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(20):
            post(gw_port, alice, hello)
        before = rss_kib(gw.pid)
        huge = "m" * (1 << 20)
        refused = 0
        for i in range(100):
            status, _ = post(gw_port, alice, {"model": f"{huge}{i}", "messages": hello["messages"]})
            refused += status == 400
        after = rss_kib(gw.pid)
        _, metrics = get(gw_port, "/metrics", ops)
        print(f"memory     100 calls with 1 MiB model ids: {refused} refused with 400; RSS "
              f"{before / 1024:.1f} -> {after / 1024:.1f} MiB (+{(after - before) / 1024:.1f} MiB); "
              f"/metrics {len(metrics) / 1024:.1f} KiB")

        preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
        socks = []
        for i in range(200):
            s = socket.create_connection(("127.0.0.1", gw_port))
            s.sendall(b"P" if i % 2 == 0 else preface)
            socks.append(s)
        t0 = time.time()
        time.sleep(3.0)
        closed = 0
        for s in socks:
            s.setblocking(False)
            try:
                while True:
                    d = s.recv(65536)
                    if not d:
                        closed += 1
                        break
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
            s.close()
        print(f"sockets    {closed} of 200 silent HTTP/2 sockets closed {time.time() - t0:.1f} s "
              f"after connecting (header deadline 2 s)")

        up0 = upstream.requests
        prompts0 = len(upstream.prompts)
        t0 = time.time()
        for i in range(30):
            s = socket.create_connection(("127.0.0.1", gw_port))
            body = json.dumps({"model": "mock/echo", "stream": True, "max_tokens": 3,
                               "messages": [{"role": "user", "content": f"slow {i}"}]}).encode()
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
                      + f"authorization: Bearer {mallory}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
                      + body)
            time.sleep(0.3)
            s.close()
        elapsed = time.time() - t0
        time.sleep(0.5)
        sent = upstream.requests - up0
        admitted = len(upstream.prompts) - prompts0
        allowed = 10 + int(elapsed)
        print(f"abandoned  30 streaming calls left after 0.3 s each ({elapsed:.1f} s): {admitted} "
              f"admitted (reached the upstream), {sent} upstream requests with hedges; the limit "
              f"allows {allowed}")
        if os.environ.get("ABUSE_DEBUG"):
            _, m = get(gw_port, "/metrics", ops)
            for line in m.decode().splitlines():
                if ("hedge" in line or "retr" in line or "attempt" in line) and not line.startswith("#"):
                    print("   ", line[:200])

        time.sleep(10)  # let mallory's bucket refill
        results = []

        def alice_calls():
            for i in range(60):
                results.append(post(gw_port, alice, {"model": "mock/echo", "max_tokens": 3,
                                                     "messages": [{"role": "user", "content": f"a{i}"}]})[0])

        t = threading.Thread(target=alice_calls)
        t.start()
        rude = [
            {"model": "mock/echo", "messages": [{"role": "user", "content": "FLAG-ME"}]},
            {"model": "mock/echo", "max_tokens": 100000, "max_completion_tokens": 1, "n": 8,
             "messages": [{"role": "user", "content": "x"}]},
            {"model": "mock/echo", "models": ["anthropic/claude-opus-4"], "messages": [{"role": "user", "content": "x"}]},
            {"model": "mock/echo:online", "messages": [{"role": "user", "content": "x"}]},
            {"model": "mock/echo", "user": "u" * (1 << 20), "messages": [{"role": "user", "content": "x"}]},
        ]
        mallory_status = {}
        for i in range(40):
            st, _ = post(gw_port, mallory, rude[i % len(rude)])
            mallory_status[st] = mallory_status.get(st, 0) + 1
        t.join()
        ok = sum(1 for s in results if s == 200)
        _, health = get(gw_port, "/healthz")
        h = json.loads(health)
        print(f"tenants    another tenant's calls while one misbehaves: {ok} of {len(results)} "
              f"succeeded; the misbehaving tenant got {dict(sorted(mallory_status.items()))}; "
              f"/healthz {h['status']}, keys {h.get('upstream_keys')}")
    finally:
        gw.terminate()
        gw.wait()
        upstream.shutdown()


if __name__ == "__main__":
    sys.exit(main())
