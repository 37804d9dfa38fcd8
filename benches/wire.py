"""What the over-the-wire bench scripts share: free ports and a checker of the mock's answers.

The mock's answer to a request is consecutive words of its passage (`GET /_mock/words`),
starting where the request's tag says, one word and a space per token: an answer with a
token missing, repeated, reordered or taken from another answer is not.
"""

import http.client
import json
import socket
import time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def mock_words(port, key="sk-or-v1-wire"):
    """The passage the mock at `port` answers from."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", "/_mock/words", headers={"authorization": f"Bearer {key}"})
        return json.loads(c.getresponse().read())
    finally:
        c.close()


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


def counters(port, key="sk-or-v1-wire"):
    """The mock's request counter (every request it was sent)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", "/_mock/counters", headers={"authorization": f"Bearer {key}"})
        return json.loads(c.getresponse().read())["requests"]
    finally:
        c.close()


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
