"""A hostile client against a real keyed service: over 10,000 fuzzed messages (bytes, JSON of
any shape and depth, requests with wrong, missing, oversized or unknown fields, another
client's job ids, uploads out of order) and fuzzed HTTP paths. Every message gets one reply
(a JSON error of a known type naming the problem, never an internal error; an acceptance
only for a known operation), the service stays up, serves a valid client afterwards, and
another client's job is untouched."""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ServerProcess, free_port_pair, key_folder, run_python

pytestmark = [pytest.mark.blender, pytest.mark.ray]

MESSAGES = 10_000
#: each operation's fields (the fuzzer mostly sends these, sometimes others)
OPS = {"hello": [], "upload": ["sha256", "offset", "total"], "have": ["hashes"],
       "submit": ["spec", "blob", "bundle", "filename", "priority"], "status": ["job_id"],
       "list": ["states"], "cancel": ["job_id"], "pause": ["job_id"], "resume": ["job_id"],
       "priority": ["job_id", "priority"], "fetch": ["job_id", "frame", "offset", "length"]}
FIELDS = sorted({f for fields in OPS.values() for f in fields})
#: the error types a refusal may name (``internal`` is a bug: never expected)
ERRORS = {"bad_request", "not_found", "refused", "too_big", "rate_limited", "conflict",
          "bad_upload", "bad_bundle", "limit", "bad_input", "missing_files", "version"}


def assert_named(frames: list[bytes], message: Any) -> str:
    """Every reply names what it answers: a refusal a known error type and a message that
    says what is wrong (about the operation or field the request named, once it got that
    far), never an internal error or a traceback; an acceptance only for a request of a
    known operation. Returns the reply's type ("ok" or the error's)."""
    assert isinstance(message, dict) and isinstance(message.get("ok"), bool), message
    try:
        header = json.loads(frames[0])
    except ValueError:
        header = None
    known_op = isinstance(header, dict) and isinstance(header.get("op"), str) \
        and header["op"] in OPS and header.get("v") == 1
    if message["ok"]:
        assert known_op, (frames[0][:200], message)
        return "ok"
    error = message.get("error")
    assert isinstance(error, dict) and error.get("type") in ERRORS, (frames[0][:200], message)
    text = error.get("message")
    assert isinstance(text, str) and 0 < len(text) <= 2000 and "Traceback" not in text, error
    if error["type"] == "bad_request" and known_op:
        # past the envelope: the refusal names the operation (or the field) it refused
        assert header["op"] in text or any(str(f) in text for f in header), (header, text)
    return str(error["type"])


@pytest.fixture(scope="module")
def fuzz_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A keyed service (no request rate limit, so every message reaches the parser and the
    handlers), alice's paused job on it, and bob's keys for the fuzzer."""
    folder = key_folder(tmp_path_factory.mktemp("fuzz-keys"), ("client", "alice", "bob"))
    http_port = free_port_pair()
    server = ServerProcess(tmp_path_factory.mktemp("fuzz") / "state", folder, "--workers", "1",
                           "--requests-per-second", "0", "--http", f"127.0.0.1:{http_port}")
    server.start()
    blend = tmp_path_factory.mktemp("fuzz-scene") / "fuzz.blend"
    run_python("-m", "renderfarm.blender.scenes", str(blend), "--width", "32", "--height",
               "24", "--samples", "1", "--frames", "40")
    try:
        with server.client(client_key=str(folder / "alice.key_secret")) as alice:
            job_id = alice.submit(blend, {"frames": "1-40", "output": "f_####.png"},
                                  priority=3)
            alice.pause(job_id)
            yield {"server": server, "keys": folder, "job_id": job_id,
                   "http": f"http://127.0.0.1:{http_port}"}
    finally:
        server.stop()


def _json(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value of any shape (deeper values get rarer)."""
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, -1, 1, 2**31, -2**63, 2**70, rng.randrange(-10**6, 10**6)])
    if kind == 3:
        return rng.choice([0.5, -1e308, 1e308, float("inf"), float("nan"), rng.random()])
    if kind in (4, 5):
        return "".join(rng.choice("ab/.\\\x00\u00e9\U0001f600 -_") for _ in
                       range(rng.randrange(30)))
    if kind in (6, 7):
        return [_json(rng, depth + 1) for _ in range(rng.randrange(5))]
    return {_json(rng, 9) if rng.random() < 0.3 else rng.choice(FIELDS): _json(rng, depth + 1)
            for _ in range(rng.randrange(5))}


def _value(rng: random.Random, job_id: str) -> Any:
    """A value for a request field: often of the right type, often not."""
    pick = rng.randrange(10)
    if pick == 0:
        return job_id  # another client's job
    if pick == 1:
        return rng.randbytes(32).hex()  # a well-formed SHA-256
    if pick == 2:
        return rng.choice([-1, 0, 1, 7, 2**62, -2**70, 10**30])
    if pick == 3:
        return rng.choice("x\u00e9\U0001f600/.") * rng.randrange(1000, 70_000)  # oversized
    if pick == 4:
        return [rng.randbytes(32).hex() for _ in range(rng.randrange(60))]
    if pick == 5:
        depth = rng.randrange(1, 900)  # nesting up to Python's recursion limit
        return json.loads("[" * depth + "]" * depth)
    if pick == 6:
        return {"frames": _json(rng), "tiles": _json(rng), "output": _json(rng),
                "samples": _json(rng)}
    return _json(rng)


def hostile_message(rng: random.Random, job_id: str) -> list[bytes]:
    """One hostile message: raw bytes, any JSON, or a request with wrong, missing, unknown
    or oversized fields, sometimes with extra frames."""
    pick = rng.randrange(10)
    if pick == 0:
        first = rng.randbytes(rng.randrange(300))
    elif pick == 1:
        first = json.dumps(_json(rng)).encode()
    else:
        op = rng.choice(sorted(OPS)) if rng.random() < 0.9 else _json(rng)
        header: dict[Any, Any] = {
            "v": 1 if rng.random() < 0.9 else _json(rng),
            "id": rng.randrange(2**40) if rng.random() < 0.7 else _json(rng), "op": op}
        for name in OPS.get(op, []) if isinstance(op, str) else []:
            if rng.random() < 0.8:
                header[name] = _value(rng, job_id)
        for _ in range(rng.choice([0, 0, 0, 1, 2])):
            header[rng.choice(FIELDS) if rng.random() < 0.5 else str(_json(rng))] = \
                _value(rng, job_id)
        first = json.dumps(header).encode()
    return [first, *(rng.randbytes(rng.randrange(5000)) for _ in range(rng.choice([0, 0, 1, 2])))]


def test_ten_thousand_hostile_messages_and_the_service_is_unharmed(
        fuzz_farm: dict[str, Any]) -> None:
    import zmq

    from renderfarm.server.transport import read_key, secure_client

    server, keys, job_id = fuzz_farm["server"], fuzz_farm["keys"], fuzz_farm["job_id"]
    with server.client(client_key=str(keys / "alice.key_secret")) as alice:
        before = alice.status(job_id)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    secure_client(sock, read_key(str(keys / "server.key")).public,
                  read_key(str(keys / "bob.key_secret"), secret=True))
    sock.connect(server.address)
    counts: Counter[str] = Counter()

    @settings(max_examples=MESSAGES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.randoms(use_true_random=False))
    def send(rng: random.Random) -> None:
        frames = hostile_message(rng, job_id)
        sock.send_multipart(frames)
        assert sock.poll(10_000), f"no reply to {frames[0][:120]!r}"
        reply = sock.recv_multipart()
        counts[assert_named(frames, json.loads(reply[0]))] += 1
        counts["messages"] += 1

    send()
    # one message over the size limit, and the service goes on
    sock.send_multipart([b'{"v": 1, "op": "hello", "id": 1}', b"x" * (17 * 1024 * 1024)])
    if sock.poll(10_000):
        counts["too_big_reply"] += 1
        sock.recv_multipart()
    sock.close(0)
    print(dict(counts))
    assert counts["messages"] >= MESSAGES
    with server.client(client_key=str(keys / "bob.key_secret")) as bob:
        assert bob.hello()["you"] == "bob"
        assert job_id not in {j["job_id"] for j in bob.list()}
    with server.client(client_key=str(keys / "alice.key_secret")) as alice:
        after = alice.status(job_id)
    for key in ("state", "priority", "owner"):
        assert after[key] == before[key], (key, before, after)


def test_fuzzed_http_paths_get_404_or_the_page(fuzz_farm: dict[str, Any]) -> None:
    http = fuzz_farm["http"]
    statuses: Counter[int] = Counter()

    @settings(max_examples=500, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.one_of(
        st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=80),
        st.sampled_from(["/preview/../../farm.db", "/job/..", "/api/job/%2e%2e",
                         "//etc/passwd", "/preview/" + "a" * 300 + ".png"])))
    def get(path: str) -> None:
        url = http + "/" + urllib.request.quote(path.lstrip("/"), safe="/%.")
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:
                status = reply.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        statuses[status] += 1
        assert status in (200, 404), (path, status)

    get()
    with fuzz_farm["server"].client(client_key=str(fuzz_farm["keys"] / "alice.key_secret")) \
            as alice:
        token = alice.web_token()  # a keyed farm's page needs a login
    started = time.monotonic()
    request = urllib.request.Request(http + "/api/jobs",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.status == 200 and fuzz_farm["job_id"] in reply.read().decode()
    assert time.monotonic() - started < 5
    print(dict(statuses))
    assert sum(statuses.values()) >= 500
