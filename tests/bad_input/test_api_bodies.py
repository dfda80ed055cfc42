"""Bad PUT bodies and unit names against a real fleetd (real etcd, its unix socket): HTTP 400
(413 for a body over the limit), a JSON error, nothing stored; and the body validator,
fed by hypothesis, answers only with ApiError(400) or a request."""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetd.api import ApiError
from fleetd.api.schema import UnitRequest, parse_unit_request
from fleetd.config import Config
from fleetd.daemon import Server
from tests.bad_input.support import FUZZ, bounded, tally
from tests.fleetd.test_api import UnixConnection, call
from tests.support.etcd import wait_for

V1 = "/fleet/v1"
JSON = {"Content-Type": "application/json"}
GOOD_OPTIONS = [{"section": "Service", "name": "ExecStart", "value": "/bin/true"}]


@pytest.fixture(scope="module")
def fleet(etcd_server):
    base = Path(tempfile.mkdtemp(prefix="fbad-"))
    server = Server(Config(etcd_servers=(etcd_server.url,), state_dir=base / "s",
                           etcd_key_prefix=f"/bad-{uuid.uuid4().hex[:8]}/", agent_ttl=3.0,
                           public_ip="127.0.0.1", disable_engine=True))
    server.start()
    wait_for(lambda: server.machine.id in server.registry.machines()[1], 15,
             message="fleetd registered")
    yield server
    server.shutdown()
    shutil.rmtree(base, ignore_errors=True)


def put(server: Server, path: str, body: bytes, headers: dict | None = None):
    conn = UnixConnection(server.config.api_socket_path)
    try:
        return call(conn, "PUT", f"{V1}/units/{path}", body, JSON if headers is None else headers)
    finally:
        conn.close()


def opt(section: str, name: str, value) -> dict:
    return {"section": section, "name": name, "value": value}


BODIES = {
    "empty": b"",
    "whitespace": b"   ",
    "null": b"null",
    "number": b"5",
    "truncated": b'{"desiredState": "launched", "options": [',
    "trailing-garbage": b'{"desiredState": "launched"} x',
    "nan": b'{"desiredState": NaN}',
    "utf16": json.dumps({"desiredState": "launched"}).encode("utf-16"),
    "lone-surrogate": b'{"desiredState": "launched", "options": [{"section": "Service", '
                      b'"name": "ExecStart", "value": "\\ud800"}]}',
    "nul-in-value": json.dumps({"desiredState": "launched",
                                "options": [opt("Service", "ExecStart", "/bin/tr\x00ue")]}),
    "deep-objects": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    "desired-unknown": json.dumps({"desiredState": "exploded", "options": GOOD_OPTIONS}),
    "desired-list": json.dumps({"desiredState": ["launched"], "options": GOOD_OPTIONS}),
    "desired-bool": json.dumps({"desiredState": True, "options": GOOD_OPTIONS}),
    "desired-huge": json.dumps({"desiredState": "x" * 500_000, "options": GOOD_OPTIONS}),
    "options-string": json.dumps({"desiredState": "launched", "options": "ExecStart=x"}),
    "options-null-item": json.dumps({"desiredState": "launched", "options": [None]}),
    "section-int": json.dumps({"desiredState": "launched", "options": [opt(1, "A", "b")]}),
    "name-list": json.dumps({"desiredState": "launched", "options": [opt("S", ["A"], "b")]}),
    "value-null": json.dumps({"desiredState": "launched", "options": [opt("S", "A", None)]}),
    "section-bracket": json.dumps({"desiredState": "launched",
                                   "options": [opt("Service]\n[X", "A", "b")]}),
    "section-empty": json.dumps({"desiredState": "launched", "options": [opt("", "A", "b")]}),
    "key-equals": json.dumps({"desiredState": "launched", "options": [opt("S", "A=B", "c")]}),
    "value-newline-injection": json.dumps({"desiredState": "launched", "options": [
        opt("Service", "ExecStart", "/bin/true\nExecStartPre=/bin/evil")]}),
    "xfleet-unknown": json.dumps({"desiredState": "launched",
                                  "options": [opt("X-Fleet", "MachineIDs", "x")]}),
    "xfleet-conflicts-traversal": json.dumps({"desiredState": "launched", "options": [
        opt("X-Fleet", "Conflicts", "../../etc/*")]}),
    "xfleet-machineof-bad": json.dumps({"desiredState": "launched", "options": [
        opt("X-Fleet", "MachineOf", "../x.service")]}),
    "body-name-traversal": json.dumps({"name": "../../etc/passwd.service",
                                       "desiredState": "launched", "options": GOOD_OPTIONS}),
    "body-name-int": json.dumps({"name": 5, "desiredState": "launched",
                                 "options": GOOD_OPTIONS}),
}


@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES)
def test_bad_body_is_400_and_nothing_is_stored(fleet, body):
    name = f"bad-{uuid.uuid4().hex[:8]}.service"
    reply = put(fleet, name, body if isinstance(body, bytes) else body.encode())
    assert reply.status == 400, (reply.status, reply.raw[:300])
    message = json.loads(reply.raw)["error"]["message"]
    assert message and len(message) < 2000 and "Traceback" not in message
    assert fleet.registry.get_job(name) is None


NAMES = {
    "traversal": "../../etc/passwd.service",
    "encoded-traversal": "..%2F..%2Fetc%2Fpasswd.service",
    "double-encoded": "..%252Fetc%252Fpasswd.service",
    "dot-dot": "..",
    "nul": "web%00.service",
    "huge": "a" * 5000 + ".service",
    "unicode": "w%C3%A9b.service",
    "invalid-utf8": "w%FFb.service",
    "newline": "web%0A.service",
    "backslash-traversal": "..%5C..%5Cetc%5Cpasswd",
    "query-only": "?replace=true",
}


@pytest.mark.parametrize("name", NAMES.values(), ids=NAMES)
def test_bad_unit_name_is_refused_and_nothing_is_stored(fleet, name):
    before = set(fleet.registry.jobs()[1])
    body = json.dumps({"desiredState": "launched", "options": GOOD_OPTIONS}).encode()
    reply = put(fleet, name, body)
    assert reply.status in (400, 404), (reply.status, reply.raw[:300])
    assert json.loads(reply.raw)["error"]["message"]
    assert set(fleet.registry.jobs()[1]) == before


# -- hypothesis: the body validator ------------------------------------------------------------
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                    st.text(max_size=20), st.sampled_from(["launched", "loaded", "inactive",
                                                           "", "X-Fleet", "Service", "Global"]))
JSONISH = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
OPTION = st.fixed_dictionaries({"section": SCALARS, "name": SCALARS, "value": SCALARS})
BODY = st.fixed_dictionaries({}, optional={"name": SCALARS, "desiredState": SCALARS,
                                           "options": st.lists(OPTION | JSONISH, max_size=4)
                                           | JSONISH})


@FUZZ
@given(st.one_of(BODY.map(lambda b: json.dumps(b).encode()), JSONISH.map(
    lambda b: json.dumps(b).encode()), st.binary(max_size=64)))
def test_body_validator_answers_400_or_a_request(body):
    tally()
    with bounded(5):
        try:
            request = parse_unit_request("x.service", body)
        except ApiError as err:
            assert err.status == 400 and str(err)
            return
    assert isinstance(request, UnitRequest)
