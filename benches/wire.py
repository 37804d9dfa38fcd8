"""What the over-the-wire bench scripts share: free ports and a checker of the mock's answers.

The mock's answer to a request is consecutive words of its passage (`GET /_mock/words`),
starting where the request's tag says, one word and a space per token: an answer with a
token missing, repeated, reordered or taken from another answer is not.
"""

import http.client
import json
import socket
import threading
import time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def mock_words(port, key="sk-or-v1-wire"):
    """The passage the mock at `port` answers from."""
    return mock_get(port, "/_mock/words", key)


def is_answer(text, n, words):
    """Whether `text` is exactly a whole mock answer of `n` tokens."""
    toks = text.split(" ")
    if toks[-1] != "" or len(toks) != n + 1:
        return False
    toks = toks[:-1]
    if not toks:
        return True
    size = len(words)
    return any(all(words[(start + i) % size] == t for i, t in enumerate(toks))
               for start in range(size) if words[start] == toks[0])


def mock_get(port, path, key="sk-or-v1-wire"):
    """The JSON the mock at `port` answers a `GET path` with."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", path, headers={"authorization": f"Bearer {key}"})
        return json.loads(c.getresponse().read())
    finally:
        c.close()


def counters(port, key="sk-or-v1-wire"):
    """The mock's request counter (every request it was sent)."""
    return mock_get(port, "/_mock/counters", key)["requests"]


def stream_ttft(conn, path, body, headers):
    """One streaming call on a kept-alive connection: its time to the first content, in ms,
    or None when it was not a 200."""
    t0 = time.perf_counter()
    conn.request("POST", path, body=json.dumps(body), headers=headers)
    r = conn.getresponse()
    if r.status != 200:
        r.read()
        return None
    ttft = None
    while True:
        line = r.readline()
        if not line:
            break
        if ttft is None and line.startswith(b"data: {") and b'"content"' in line:
            ttft = (time.perf_counter() - t0) * 1000
    return ttft


def pool(port, calls, inflight, one):
    """`calls` calls at `inflight` in flight, each on a kept-alive connection:
    `one(conn, i)` per call, its result collected (None when the connection failed)."""
    out = []
    lock = threading.Lock()
    idx = iter(range(calls))

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                i = next(idx, None)
            if i is None:
                break
            try:
                t = one(conn, i)
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                t = None
            with lock:
                out.append(t)
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(inflight)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def wait_for(port, path="/healthz", timeout=30.0, key="sk-or-v1-wire"):
    """Waits until something on `port` answers `path` (any status)."""
    deadline = time.time() + timeout
    while True:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        try:
            c.request("GET", path, headers={"authorization": f"Bearer {key}"})
            c.getresponse().read()
            return
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.05)
        finally:
            c.close()
