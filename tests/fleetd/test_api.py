"""fleet API v1 served by a real in-process fleetd on a real etcd, spoken to over its unix
socket (and TCP when configured): routes, status codes, JSON shapes, pagination, status and
journal of a running unit, the socket's permissions and the listener rules.

Each fleetd gets its own key prefix in the module's etcd and a short temporary state dir
(unix socket paths are limited to 107 bytes).
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetd.api import Api, ApiError, ApiServer
from fleetd.api.encode import decode_token, paginate
from fleetd.api.handlers import answer
from fleetd.config import Config, ConfigError, load_config
from fleetd.daemon import Server
from fleetd.job import JobState
from fleetd.registry.etcd import Etcd
from fleetd.registry.registry import Registry, encode
from fleetd.unit.unitfile import content_hash, parse_unit_file, serialize
from tests.support.etcd import free_port, wait_for

V1 = "/fleet/v1"
JSON = {"Content-Type": "application/json"}
SLEEPER = "[Service]\nExecStart=/bin/sh -c 'echo hello; exec sleep 100'\n"
TICKER = "[Service]\nExecStart=/bin/sh -c 'while true; do echo tick; sleep 0.2; done'\n"


# -- a tiny client ---------------------------------------------------------------------------------
class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float = 10) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    raw: bytes

    @property
    def json(self):
        assert self.headers.get("Content-Type") == "application/json", self.headers
        return json.loads(self.raw)

    @property
    def message(self) -> str:
        body = self.json
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
        assert body["error"]["code"] == self.status
        return body["error"]["message"]


def call(conn: http.client.HTTPConnection, method: str, path: str, body=None,
         headers: dict | None = None) -> Reply:
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    return Reply(response.status, response.headers, response.read())


@dataclass
class Fleet:
    server: Server
    base: Path

    @property
    def sock(self) -> Path:
        return self.server.config.api_socket_path

    @property
    def registry(self) -> Registry:
        return self.server.registry

    @property
    def machine(self) -> str:
        return self.server.machine.id

    def call(self, method: str, path: str, body=None, headers: dict | None = None) -> Reply:
        conn = UnixConnection(self.sock)
        try:
            return call(conn, method, path, body, headers)
        finally:
            conn.close()

    def put(self, name: str, body, query: str = "") -> Reply:
        return self.call("PUT", f"{V1}/units/{name}{query}", body, JSON)

    def unit(self, name: str) -> dict:
        reply = self.call("GET", f"{V1}/units/{name}")
        assert reply.status == 200, reply
        return reply.json


def options(text: str) -> list[dict]:
    return [{"section": o.section, "name": o.name, "value": o.value}
            for o in parse_unit_file(text).options]


def unique(prefix: str = "u") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}.service"


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fleets(etcd_server):
    """Start fleetds (each with its own prefix and state dir); all stopped at the end."""
    started: list[Fleet] = []

    def start(**settings) -> Fleet:
        base = Path(tempfile.mkdtemp(prefix="fapi-"))
        values = dict(etcd_servers=(etcd_server.url,),
                      etcd_key_prefix=f"/api-{uuid.uuid4().hex[:8]}/", state_dir=base / "s",
                      agent_ttl=3.0, engine_reconcile_interval=0.5, public_ip="127.0.0.1",
                      metadata={"role": "api"})
        values.update(settings)
        server = Server(Config(**values))
        fleet = Fleet(server, base)
        started.append(fleet)
        server.start()
        wait_for(lambda: server.machine.id in server.registry.machines()[1], 15,
                 message="fleetd registered")
        return fleet

    yield start
    stoppers = [threading.Thread(target=f.server.shutdown) for f in started]
    for stopper in stoppers:
        stopper.start()
    for stopper in stoppers:
        stopper.join(60)
    for fleet in started:
        shutil.rmtree(fleet.base, ignore_errors=True)


@pytest.fixture(scope="module")
def shared(fleets) -> Fleet:
    """One engine-less fleetd for the tables: nothing gets scheduled, names are unique."""
    return fleets(disable_engine=True)


@pytest.fixture
def fleet(fleets) -> Fleet:
    return fleets()


# -- routes and shapes ----------------------------------------------------------------------------
def test_discovery_lists_every_method(shared):
    reply = shared.call("GET", f"{V1}/discovery")
    assert reply.status == 200
    doc = reply.json
    assert doc["id"] == "fleet:v1" and doc["basePath"] == "/fleet/v1/"
    methods = {m["id"]: (m["httpMethod"], m["path"]) for r in doc["resources"].values()
               for m in r["methods"].values()}
    assert methods["fleet.Units.Set"] == ("PUT", "units/{unitName}")
    assert {"fleet.Machines.List", "fleet.Units.List", "fleet.Units.Get", "fleet.Units.Delete",
            "fleet.UnitState.List", "fleet.UnitState.Get", "fleet.Units.Status",
            "fleet.Units.Journal"} <= set(methods)
    assert methods["fleet.UnitState.Get"] == ("GET", "state/{unitName}")


def test_machines_shape(shared):
    reply = shared.call("GET", f"{V1}/machines")
    assert reply.status == 200
    [machine] = reply.json["machines"]
    assert set(reply.json) == {"machines"}
    assert machine.pop("apiURL").startswith(("unix://", "http://"))
    assert machine == {"id": shared.machine, "primaryIP": "127.0.0.1", "metadata": {"role": "api"}}


def test_unit_lifecycle_codes_shapes_and_states(fleet):
    name = unique("life")
    assert fleet.put(name, {"desiredState": "inactive", "options": options(SLEEPER)}).status == 201
    unit = fleet.unit(name)
    assert unit == {"name": name, "options": options(SLEEPER), "desiredState": "inactive",
                    "currentState": "inactive", "machineID": ""}
    listed = fleet.call("GET", f"{V1}/units")
    assert listed.status == 200 and listed.json == {"units": [unit]}

    changed = fleet.put(name, {"desiredState": "launched"})
    assert changed.status == 204 and changed.raw == b""
    launched = wait_for(lambda: (lambda u: u if u["currentState"] == "launched" else None)(
        fleet.unit(name)), 20, message="unit launched")
    assert launched["desiredState"] == "launched" and launched["machineID"] == fleet.machine

    def running_state():
        states = fleet.call("GET", f"{V1}/state").json["states"]
        return states if states and states[0]["systemdSubState"] == "running" else None
    (state,) = wait_for(running_state, 20, message="state published")
    assert state == {"name": name, "hash": content_hash(parse_unit_file(SLEEPER)),
                     "machineID": fleet.machine, "systemdLoadState": "loaded",
                     "systemdActiveState": "active", "systemdSubState": "running"}

    assert fleet.call("DELETE", f"{V1}/units/{name}").status == 204
    missing = fleet.call("GET", f"{V1}/units/{name}")
    assert missing.status == 404 and name in missing.message
    assert fleet.call("DELETE", f"{V1}/units/{name}").status == 404
    assert fleet.call("GET", f"{V1}/units").json == {"units": []}
    wait_for(lambda: fleet.call("GET", f"{V1}/state").json == {"states": []}, 20,
             message="state cleared after destroy")


def test_state_filters(fleets):
    fleet = fleets(disable_engine=True)
    keys, etcd = fleet.registry.keys, fleet.registry.etcd
    rows = [("a.service", "m1", "active"), ("a.service", "m2", "inactive"),
            ("b.service", "m1", "failed")]
    for name, machine, active in rows:
        etcd.put(keys.state(name, machine), encode({"hash": "h" * 40, "load": "loaded",
                                                    "active": active, "sub": "x"}))

    def states(query: str) -> list[tuple[str, str]]:
        reply = fleet.call("GET", f"{V1}/state{query}")
        assert reply.status == 200 and set(reply.json) == {"states"}
        return [(s["name"], s["machineID"]) for s in reply.json["states"]]

    assert states("") == [("a.service", "m1"), ("a.service", "m2"), ("b.service", "m1")]
    assert states("?machineID=m1") == [("a.service", "m1"), ("b.service", "m1")]
    assert states("?unitName=a.service") == [("a.service", "m1"), ("a.service", "m2")]
    assert states("?unitName=a.service&machineID=m2") == [("a.service", "m2")]
    assert states("?machineID=nowhere") == []
    assert fleet.call("GET", f"{V1}/state?machineID=m1&machineID=m2").status == 400


def test_current_state_follows_the_assigned_machines_published_state(fleets):
    fleet = fleets(disable_engine=True)
    keys, etcd = fleet.registry.keys, fleet.registry.etcd
    unit = parse_unit_file("[Service]\nExecStart=/bin/true\n")
    digest = content_hash(unit)
    fleet.registry.create_job("c.service", unit, JobState.LAUNCHED)
    assert fleet.unit("c.service")["currentState"] == "inactive"  # not scheduled
    etcd.put(keys.assignment("m1", "c.service"), encode({"hash": digest, "desired": "launched"}))
    etcd.put(keys.state("c.service", "m2"), encode({"hash": digest, "load": "loaded",
                                                    "active": "active", "sub": "running"}))
    assert fleet.unit("c.service")["currentState"] == "inactive"  # active elsewhere only
    assert fleet.unit("c.service")["machineID"] == "m1"
    etcd.put(keys.state("c.service", "m1"), encode({"hash": digest, "load": "loaded",
                                                    "active": "inactive", "sub": "dead"}))
    assert fleet.unit("c.service")["currentState"] == "loaded"
    etcd.put(keys.state("c.service", "m1"), encode({"hash": digest, "load": "loaded",
                                                    "active": "active", "sub": "running"}))
    assert fleet.unit("c.service")["currentState"] == "launched"


# -- pagination ------------------------------------------------------------------------------------
def walk(fleet: Fleet, path: str, field: str) -> list[list[dict]]:
    pages, token = [], None
    while True:
        reply = fleet.call("GET", path + (f"?nextPageToken={token}" if token else ""))
        assert reply.status == 200
        pages.append(reply.json[field])
        token = reply.json.get("nextPageToken")
        if token is None:
            return pages
        assert set(reply.json) == {field, "nextPageToken"}


def test_pagination_over_units_states_and_machines(fleets):
    fleet = fleets(disable_engine=True)
    registry, keys = fleet.registry, fleet.registry.keys
    unit = parse_unit_file("[Service]\nExecStart=/bin/true\n")
    digest = content_hash(unit)
    names = [f"p{i:03d}.service" for i in range(250)]
    ops = registry.etcd.ops
    writes = [ops.put(keys.unit(digest), serialize(unit))]
    writes += [ops.put(keys.job(n), encode({"name": n, "hash": digest, "desired": "inactive"}))
               for n in names]
    writes += [ops.put(keys.state(n, "m0"), encode({"hash": digest, "load": "loaded",
                                                    "active": "inactive", "sub": "dead"}))
               for n in names[:130]]
    writes += [ops.put(keys.machine(f"fake{i:03d}"), encode({"id": f"fake{i:03d}"}))
               for i in range(110)]
    assert registry.commit_batches([], writes) == 0

    pages = walk(fleet, f"{V1}/units", "units")
    assert [len(p) for p in pages] == [100, 100, 50]
    assert [u["name"] for p in pages for u in p] == names
    assert all(u["options"] == options(serialize(unit)) for p in pages for u in p)
    pages = walk(fleet, f"{V1}/state", "states")
    assert [len(p) for p in pages] == [100, 30]
    assert [s["name"] for p in pages for s in p] == names[:130]
    pages = walk(fleet, f"{V1}/machines", "machines")
    assert [len(p) for p in pages] == [100, 11]
    assert len({m["id"] for p in pages for m in p}) == 111

    for bad in ("garbage", "", "eyJrIjoibWFjaGluZXMiLCJhZnRlciI6W119"):  # a machines token
        reply = fleet.call("GET", f"{V1}/units?nextPageToken={bad}")
        assert reply.status == 400, bad
        assert reply.message == "invalid value of nextPageToken query parameter"


def test_a_client_may_ask_for_larger_pages_up_to_a_bound(etcd_server):
    """`pageSize` (ours: fleet's server ignores it): a listing of a large cluster in one
    request; without it fleet's pages of 100; more than the bound gets the bound, and what
    is not a whole number of items is 400."""
    registry = stored_cluster(etcd_server, 250)
    try:
        api = Api(registry, runner=None, machine_id="m0", max_page_size=200)
        names = sorted(f"job@{i}.service" for i in range(250))
        states = [(n, f"m{i}") for n in names for i in range(3)
                  if f"m{i}" in (f"m{int(n[4:-8]) % 3}", f"m{(int(n[4:-8]) + 1) % 3}")]
        for asked, unit_pages, state_pages in (
                (None, [100, 100, 50], [100] * 5), ("1000", [200, 50], [200, 200, 100]),
                ("120", [120, 120, 10], [120] * 4 + [20]), ("200", [200, 50], [200, 200, 100]),
                ("10000000000", [200, 50], [200, 200, 100]), ("0001", [1] * 250, [1] * 500)):
            for route, key, sizes in ((api.list_units, "units", unit_pages),
                                      (api.list_states, "states", state_pages)):
                pages, token = [], None
                while True:
                    query = {"pageSize": [asked]} if asked else {}
                    if token:
                        query["nextPageToken"] = [token]
                    reply = route(query)
                    assert reply.status == 200, reply.body
                    pages.append(reply.body[key])
                    token = reply.body.get("nextPageToken")
                    if not token:
                        break
                assert [len(p) for p in pages] == sizes, (asked, key)
                if key == "units":
                    assert [u["name"] for p in pages for u in p] == names
                else:
                    assert [(s["name"], s["machineID"]) for p in pages for s in p] == states
        for bad in ("0", "000", "-1", "x", "", "1e3", " 5", "１０"):
            reply = answer(lambda bad=bad: api.list_units({"pageSize": [bad]}))
            assert reply.status == 400, bad
            assert "pageSize" in reply.body["error"]["message"]
        assert answer(lambda: api.list_units({"pageSize": ["5", "6"]})).status == 400
    finally:
        registry.etcd.close()


@given(names=st.sets(st.text("abc", min_size=1, max_size=4), max_size=40),
       size=st.integers(1, 7))
def test_paginate_walks_every_item_once_in_order(names, size):
    seen, token = [], None
    while True:
        page, token = paginate(names, lambda n: (n,), "units", token, size)
        assert len(page) <= size
        seen += page
        if token is None:
            break
    assert seen == sorted(names)


@given(st.text(max_size=40))
def test_garbage_tokens_are_400_never_a_crash(token):
    try:
        decode_token("units", token)
    except ApiError as err:
        assert err.status == 400


# -- refusals: tables ----------------------------------------------------------------------------
def good_body(state: str = "inactive") -> dict:
    return {"desiredState": state, "options": options("[Service]\nExecStart=/bin/true\n")}


BAD_BODIES = {
    "not-json": (b"{nope", JSON, 400, "unable to decode body"),
    "not-utf8": (b'{"desiredState": "\xff"}', JSON, 400, "unable to decode body"),
    "deeply-nested": (b"[" * 100_000, JSON, 400, "unable to decode body"),
    "json-array": (b"[]", JSON, 400, "must be a JSON object"),
    "json-string": (b'"launched"', JSON, 400, "must be a JSON object"),
    "options-not-a-list": ({"desiredState": "launched", "options": {"section": "Service"}},
                           JSON, 400, "options must be a list"),
    "option-not-an-object": ({"desiredState": "launched", "options": ["ExecStart=/bin/true"]},
                             JSON, 400, "options[0] must be an object"),
    "option-missing-name": ({"desiredState": "launched",
                             "options": [{"section": "Service", "value": "/bin/true"}]},
                            JSON, 400, "options[0] has no 'name'"),
    "option-missing-section": ({"options": [{"name": "ExecStart", "value": "/bin/true"}]},
                               JSON, 400, "options[0] has no 'section'"),
    "option-value-not-a-string": ({"desiredState": "launched", "options": [
        {"section": "Service", "name": "ExecStart", "value": 5}]},
        JSON, 400, "options[0].value must be a string"),
    "option-name-with-space": ({"desiredState": "launched", "options": [
        {"section": "Service", "name": "Exec Start", "value": "/bin/true"}]},
        JSON, 400, "is not allowed in setting name"),
    "option-value-with-newline": ({"desiredState": "launched", "options": [
        {"section": "Service", "name": "ExecStart", "value": "/bin/true\nExecStop=x"}]},
        JSON, 400, "control character"),
    "xfleet-bad-boolean": ({"desiredState": "launched", "options": [
        {"section": "X-Fleet", "name": "Global", "value": "maybe"}]},
        JSON, 400, "Global=maybe is not a boolean"),
    "xfleet-unknown-option": ({"desiredState": "launched", "options": [
        {"section": "X-Fleet", "name": "MachineIDs", "value": "abc"}]},
        JSON, 400, "did you mean MachineID?"),
    "unknown-desired-state": ({**good_body(), "desiredState": "running"}, JSON, 400,
                              "unknown unit state 'running'"),
    "desired-state-not-a-string": ({**good_body(), "desiredState": 1}, JSON, 400,
                                   "desiredState must be a string"),
    "name-differs-from-url": ({**good_body(), "name": "other.service"}, JSON, 400,
                              "differs from unit name in request body"),
    "bad-replace-flag": (good_body(), JSON, 400, "replace='maybe' must be true or false"),
    "no-options-for-unknown-unit": ({"desiredState": "launched"}, JSON, 409,
                                    "does not exist and options field empty"),
    "empty-options-for-unknown-unit": ({"desiredState": "launched", "options": []}, JSON, 409,
                                       "does not exist and options field empty"),
    "text-plain": (good_body(), {"Content-Type": "text/plain"}, 415, "application/json"),
    "no-content-type": (good_body(), {}, 415, "application/json"),
    "json-suffix-type": (good_body(), {"Content-Type": "application/json-patch+json"}, 415,
                         "application/json"),
}


@pytest.mark.parametrize("body,headers,status,fragment", BAD_BODIES.values(), ids=BAD_BODIES)
def test_bad_put_bodies_are_refused_and_nothing_is_stored(shared, body, headers, status,
                                                          fragment):
    name = unique("bad")
    query = "?replace=maybe" if "replace=" in fragment else ""
    reply = shared.call("PUT", f"{V1}/units/{name}{query}", body, headers)
    assert reply.status == status, reply
    assert fragment in reply.message
    assert shared.registry.get_job(name) is None


def test_charset_parameter_is_fine_and_a_body_name_may_repeat_the_url(shared):
    name = unique("ok")
    reply = shared.call("PUT", f"{V1}/units/{name}", {**good_body(), "name": name},
                        {"Content-Type": "application/json; charset=utf-8"})
    assert reply.status == 201


BAD_NAMES = {
    "path-traversal": "../../etc/passwd.service",
    "encoded-traversal": "..%2F..%2Fetc%2Fpasswd.service",
    "nul": "x%00.service",
    "leading-nul": "%00.service",
    "empty": "",
    "no-suffix": "noext",
    "unknown-suffix": "a.servic",
    "space": "a%20b.service",
}


ROUTES_WITH_A_NAME = {"get": ("GET", ""), "put": ("PUT", ""), "delete": ("DELETE", ""),
                      "status": ("GET", "/status"), "journal": ("GET", "/journal")}


@pytest.mark.parametrize("method,suffix,name", [
    pytest.param(method, suffix, name, id=f"{route}-{label}")
    for route, (method, suffix) in ROUTES_WITH_A_NAME.items()
    for label, name in BAD_NAMES.items()
    if name or not suffix  # units//status is no unit route; the empty row covers it
])
def test_bad_unit_names_are_400(shared, method, suffix, name):
    before = set(shared.registry.jobs()[1])
    body = good_body() if method == "PUT" else None
    reply = shared.call(method, f"{V1}/units/{name}{suffix}", body, JSON if body else None)
    assert reply.status == 400, reply
    assert "invalid unit name" in reply.message
    assert set(shared.registry.jobs()[1]) == before


@pytest.mark.parametrize("method,path,status", [
    ("POST", "/units", 405), ("DELETE", "/units", 405), ("PUT", "/machines", 405),
    ("PATCH", "/units/x.service", 405), ("POST", "/units/x.service", 405),
    ("DELETE", "/state", 405), ("PUT", "/units/x.service/status", 405),
    ("HEAD", "/units", 405), ("BREW", "/units/x.service", 405),
    ("GET", "/nothing", 404), ("GET", "/units/x.service/logs", 400),
], ids=lambda v: str(v))
def test_methods_and_unknown_routes(shared, method, path, status):
    reply = shared.call(method, V1 + path)
    assert reply.status == status
    if method == "HEAD":
        assert reply.raw == b"" and reply.headers["Allow"] == "GET"
        return
    if status == 405:
        assert reply.headers["Allow"] and "supported" in reply.message
    assert reply.message
    assert shared.call("GET", "/elsewhere").status == 404


def test_huge_body_is_413_before_it_is_read(shared):
    conn = UnixConnection(shared.sock)
    try:
        conn.putrequest("PUT", f"{V1}/units/{unique('huge')}")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str((1 << 20) + 1))
        conn.endheaders()  # the body never comes: the server must answer without it
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == 413 and response.headers["Connection"] == "close"
    assert "1 MiB" in json.loads(body)["error"]["message"]
    exactly = json.dumps({**good_body(), "pad": "x" * ((1 << 20) - 200)}).encode()
    exactly += b" " * ((1 << 20) - len(exactly))
    assert shared.call("PUT", f"{V1}/units/{unique('big')}", exactly, JSON).status == 201


def test_keep_alive_survives_refusals(shared):
    conn = UnixConnection(shared.sock)
    try:
        name = unique("ka")
        assert call(conn, "PUT", f"{V1}/units/{name}", b"{nope", JSON).status == 400
        assert call(conn, "PUT", f"{V1}/units/{name}", good_body(), {}).status == 415
        assert call(conn, "GET", f"{V1}/units/{name}").status == 404
        assert call(conn, "PUT", f"{V1}/units/{name}", good_body(), JSON).status == 201
        assert call(conn, "GET", f"{V1}/units/{name}").status == 200
    finally:
        conn.close()


# -- fleet v1.0.0's Units.Set semantics --------------------------------------------------------
def test_create_without_desired_state_is_inactive(shared):
    """fleet's client never sends desiredState on submit (`fleetctl submit/load/start`)."""
    name = unique("new")
    body = {"name": name, "options": options("[Service]\nExecStart=/bin/true\n")}
    assert shared.put(name, body).status == 201
    assert shared.unit(name)["desiredState"] == "inactive"
    launched = unique("new")
    assert shared.put(launched, good_body("launched")).status == 201
    assert shared.unit(launched)["desiredState"] == "launched"


def test_an_option_without_value_is_an_empty_value(shared):
    """Go's client omits empty strings: `Environment=` arrives as {section, name}."""
    name = unique("empty")
    body = {"options": [{"section": "Service", "name": "ExecStart", "value": "/bin/true"},
                        {"section": "Service", "name": "Environment"}]}
    assert shared.put(name, body).status == 201
    assert shared.unit(name)["options"][1] == {"section": "Service", "name": "Environment",
                                               "value": ""}


def test_different_options_replace_the_unit(shared):
    name = unique("rep")
    first = options("[Service]\nExecStart=/bin/true\n")
    second = options("[Service]\nExecStart=/bin/false\n")
    third = options("[Service]\nExecStart=/bin/sleep 1\n")
    assert shared.put(name, {"desiredState": "inactive", "options": first}).status == 201
    same = shared.put(name, {"desiredState": "loaded", "options": first})
    assert same.status == 204, "identical content is a desired-state change"
    assert shared.unit(name)["desiredState"] == "loaded"
    nothing = shared.put(name, {"options": first})
    assert nothing.status == 409
    assert "must provide DesiredState to update existing unit" in nothing.message

    # fleetctl --replace sends the new options alone: submitted anew, desired state inactive
    replaced = shared.put(name, {"name": name, "options": second})
    assert replaced.status == 201
    assert shared.unit(name)["options"] == second
    assert shared.unit(name)["desiredState"] == "inactive"
    with_state = shared.put(name, {"desiredState": "loaded", "options": third})
    assert with_state.status == 201
    assert (shared.unit(name)["options"], shared.unit(name)["desiredState"]) == (third, "loaded")

    # replace=false: a client that looked first never overwrites a unit submitted meanwhile
    refused = shared.put(name, {"desiredState": "launched", "options": first}, "?replace=false")
    assert refused.status == 409 and "already exists with different content" in refused.message
    assert shared.unit(name)["options"] == third and shared.unit(name)["desiredState"] == "loaded"
    assert shared.put(name, {"desiredState": "inactive", "options": first},
                      "?replace=true").status == 201
    assert shared.unit(name)["options"] == first
    assert shared.put(name, {"desiredState": "bogus"}).status == 400
    assert shared.unit(name)["desiredState"] == "inactive", "an unknown state is never stored"


@pytest.mark.parametrize("state", ["loaded", "launched"])
def test_a_template_cannot_be_activated(shared, state):
    template = f"{unique('tpl')[:-len('.service')]}@.service"
    body = good_body(state)
    refused = shared.put(template, body)
    assert refused.status == 400 and f'cannot activate template "{template}"' in refused.message
    assert shared.registry.get_job(template) is None
    assert shared.put(template, good_body("inactive")).status == 201
    refused = shared.put(template, {"desiredState": state})
    assert refused.status == 400 and "cannot activate template" in refused.message
    assert shared.unit(template)["desiredState"] == "inactive"
    instance = template.replace("@.", "@1.")
    assert shared.put(instance, good_body(state)).status == 201


def test_state_of_one_unit(fleets):
    """fleet's UnitState.Get: GET /state/<unit> is one UnitState object, 404 when none."""
    fleet = fleets(disable_engine=True)
    keys, etcd = fleet.registry.keys, fleet.registry.etcd

    def put_state(machine: str, active: str) -> None:
        etcd.put(keys.state("g.service", machine),
                 encode({"hash": "h" * 40, "load": "loaded", "active": active, "sub": "x"}))

    missing = fleet.call("GET", f"{V1}/state/g.service")
    assert missing.status == 404 and "unit state does not exist" in missing.message
    put_state("m2", "active")
    reply = fleet.call("GET", f"{V1}/state/g.service?alt=json")
    assert reply.status == 200
    assert reply.json == {"name": "g.service", "hash": "h" * 40, "machineID": "m2",
                          "systemdLoadState": "loaded", "systemdActiveState": "active",
                          "systemdSubState": "x"}
    put_state("m1", "failed")
    assert fleet.call("GET", f"{V1}/state/g.service").json["machineID"] == "m1"
    etcd.put(keys.assignment("m2", "g.service"), encode({"hash": "h" * 40,
                                                         "desired": "launched"}))
    assert fleet.call("GET", f"{V1}/state/g.service").json["machineID"] == "m2", \
        "the assigned machine's state wins"
    picked = fleet.call("GET", f"{V1}/state/g.service?machineID=m1").json
    assert (picked["machineID"], picked["systemdActiveState"]) == ("m1", "failed")
    assert fleet.call("GET", f"{V1}/state/g.service?machineID=m9").status == 404
    assert fleet.call("GET", f"{V1}/state/gone.service").status == 404
    assert fleet.call("GET", f"{V1}/state/a%2Fb.service").status == 400
    assert fleet.call("PUT", f"{V1}/state/g.service", good_body(), JSON).status == 405


FAILING = "[Service]\nExecStart=/bin/sh -c 'echo about to fail; exit 3'\n"


def test_a_unit_that_fails_at_once_is_launched_and_systemd_failed(fleet):
    """fleet reports such a unit as launched (its agent started it) with systemd's
    failed/failed, so a client waiting for `launched` and then for systemd sees why."""
    name = unique("fail")
    assert fleet.put(name, {"desiredState": "launched", "options": options(FAILING)}).status == 201

    def failed():
        reply = fleet.call("GET", f"{V1}/state/{name}")
        return reply.json if reply.status == 200 and \
            reply.json["systemdActiveState"] == "failed" else None
    state = wait_for(failed, 20, message="failure reported")
    assert (state["systemdLoadState"], state["systemdSubState"]) == ("loaded", "failed")
    assert fleet.unit(name)["currentState"] == "launched"
    assert fleet.put(name, {"desiredState": "loaded"}).status == 204
    wait_for(lambda: fleet.unit(name)["currentState"] == "loaded", 20,
             message="stopped: loaded again")
    assert fleet.call("DELETE", f"{V1}/units/{name}").status == 204


# -- this machine: status and journal ------------------------------------------------------------
def test_status_and_journal_of_a_running_unit(fleet):
    name = unique("hello")
    assert fleet.put(name, {"desiredState": "launched", "options": options(SLEEPER)}).status == 201
    wait_for(lambda: fleet.unit(name)["currentState"] == "launched", 20, message="launched")

    def running_status():
        reply = fleet.call("GET", f"{V1}/units/{name}/status")
        return reply if reply.status == 200 and "active (running)" in reply.json["status"] \
            else None
    reply = wait_for(running_status, 20, message="status shows running")
    assert set(reply.json) == {"machineID", "status"}
    assert reply.json["machineID"] == fleet.machine and name in reply.json["status"]

    def journal(lines: int):
        reply = fleet.call("GET", f"{V1}/units/{name}/journal?lines={lines}&follow=false")
        return reply if reply.status == 200 and b"hello" in reply.raw else None
    reply = wait_for(lambda: journal(10), 20, message="journal has the unit's output")
    assert reply.headers["Content-Type"].startswith("text/plain")
    assert len(journal(1).raw.decode().splitlines()) == 1

    unknown = fleet.call("GET", f"{V1}/units/{unique('nope')}/status")
    assert unknown.status == 404 and fleet.machine in unknown.message
    for query in ("lines=-1", "lines=many", "follow=perhaps", "lines=1&lines=2"):
        assert fleet.call("GET", f"{V1}/units/{name}/journal?{query}").status == 400, query


def stream_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate()
            if t.name == "api-journal-reader" or "process_request_thread" in t.name]


def test_journal_follow_streams_chunks_until_the_client_leaves(fleet):
    name = unique("tick")
    assert fleet.put(name, {"desiredState": "launched", "options": options(TICKER)}).status == 201
    wait_for(lambda: fleet.unit(name)["currentState"] == "launched", 20, message="launched")
    before = set(stream_threads())
    conn = UnixConnection(fleet.sock)
    try:
        conn.request("GET", f"{V1}/units/{name}/journal?lines=0&follow=true")
        response = conn.getresponse()
        assert response.status == 200
        assert response.headers["Transfer-Encoding"] == "chunked"
        ticks, deadline = 0, time.monotonic() + 15
        while ticks < 3:  # new lines arrive while the request is open
            assert time.monotonic() < deadline, "no new journal lines within 15s"
            line = response.readline()
            assert line, "stream ended early"
            ticks += line.rstrip().endswith(b": tick")
        mine = set(stream_threads()) - before  # by identity: others may still be ending
        assert mine, "a reader serves the stream"
        response.close()  # the response holds the socket open, not only the connection
    finally:
        conn.close()
    try:
        wait_for(lambda: not any(t.is_alive() for t in mine), 10)
    except TimeoutError:
        raise AssertionError("stream threads still run 10s after the client left: "
                             f"{[t for t in mine if t.is_alive()]}") from None
    assert fleet.call("GET", f"{V1}/units/{name}").status == 200


# -- the listeners -------------------------------------------------------------------------------
def test_socket_is_0600_replaces_stale_refuses_live_and_is_removed(etcd_server, fleets):
    base = Path(tempfile.mkdtemp(prefix="fapi-"))
    try:
        stale = base / "s" / "fleet.sock"
        stale.parent.mkdir()
        leftover = socket.socket(socket.AF_UNIX)
        leftover.bind(str(stale))
        leftover.close()  # a socket file nobody listens on, as a killed fleetd leaves it
        fleet = fleets(state_dir=base / "s", disable_engine=True)
        mode = os.stat(fleet.sock).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        assert fleet.server.machine.api_url == f"unix://{fleet.sock}"
        assert fleet.call("GET", f"{V1}/machines").status == 200

        api = Api(fleet.registry, fleet.server.runner, fleet.machine)
        with pytest.raises(OSError) as live:
            ApiServer(api, fleet.sock)
        assert live.value.errno == errno.EADDRINUSE and "another process" in str(live.value)
        regular = base / "regular"
        regular.write_text("keep me")
        with pytest.raises(OSError, match="is not a socket"):
            ApiServer(api, regular)
        assert regular.read_text() == "keep me"
        assert fleet.call("GET", f"{V1}/machines").status == 200, "the refusal broke nothing"
        assert sorted(p.name for p in fleet.sock.parent.iterdir()
                      if p.name.startswith(".")) == [], "no staging directory left"

        fleet.server.shutdown()
        assert not fleet.sock.exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_tcp_listener_on_loopback(fleets):
    fleet = fleets(api_address="127.0.0.1:0", disable_engine=True)
    url = fleet.server.machine.api_url
    match = re.fullmatch(r"http://127\.0\.0\.1:(\d+)", url)
    assert match, url
    record = wait_for(lambda: fleet.registry.machines()[1].get(fleet.machine), 10)
    assert record.api_url == url
    conn = http.client.HTTPConnection("127.0.0.1", int(match[1]), timeout=10)
    try:
        reply = call(conn, "GET", f"{V1}/machines")
        assert reply.status == 200 and reply.json["machines"][0]["id"] == fleet.machine
        assert call(conn, "PUT", f"{V1}/units/{unique('tcp')}", good_body(), JSON).status == 201
    finally:
        conn.close()
    assert fleet.call("GET", f"{V1}/units").status == 200, "the unix socket serves as well"


LISTEN = {
    "ipv4-loopback": (["--api-address", "127.0.0.1:4001"], None),
    "ipv6-loopback": (["--api-address", "[::1]:4001"], None),
    "localhost": (["--api-address", "localhost:4001"], None),
    "all-interfaces": (["--api-address", "0.0.0.0:4001"], "api_allow_remote=true"),
    "empty-host": (["--api-address", ":4001"], "every interface is not a loopback"),
    "hostname": (["--api-address", "example.com:4001"], "not a loopback address"),
    "remote-allowed": (["--api-address", "0.0.0.0:4001", "--api-allow-remote", "true"], None),
    "no-port": (["--api-address", "127.0.0.1"], "is not host:port"),
    "port-too-big": (["--api-address", "127.0.0.1:70000"], "out of range"),
    "bad-allow-remote": (["--api-allow-remote", "sure"], "is not true or false"),
}


@pytest.mark.parametrize("argv,problem", LISTEN.values(), ids=LISTEN)
def test_api_address_rules(argv, problem, tmp_path):
    if problem is None:
        config = load_config(["--state-dir", str(tmp_path), *argv], {})
        assert config.api_socket_path == tmp_path / "fleet.sock"
    else:
        with pytest.raises(ConfigError) as info:
            load_config(argv, {})
        assert problem in str(info.value) and "--api-" in str(info.value)


def test_server_refuses_a_remote_listener_without_allow_remote(etcd_server, tmp_path):
    config = Config(etcd_servers=(etcd_server.url,), state_dir=tmp_path / "s",
                    api_address="0.0.0.0:0")
    with pytest.raises(ValueError, match="api_allow_remote"):
        Server(config)
    assert not (tmp_path / "s").exists(), "refused before anything was made"
    env = load_config([], {"FLEET_API_SOCKET": str(tmp_path / "x.sock"),
                           "FLEET_API_ADDRESS": "127.0.0.1:0"})
    assert env.api_socket_path == tmp_path / "x.sock" and env.api_address == "127.0.0.1:0"


def test_close_is_safe_when_the_io_loop_has_just_ended():
    """The I/O loop thread closes its wake-up pipes as it ends, while close() (or a worker
    finishing a request) may be about to pull one: that pull must neither fail (EBADF) nor
    write into whatever file has since been given the pipe's descriptor number."""
    dead = Etcd([f"http://127.0.0.1:{free_port()}"], timeout=0.3)
    base = Path(tempfile.mkdtemp(prefix="fapi-"))
    server = ApiServer(Api(Registry(dead, "/dead/"), None, "m"), base / "api.sock")
    server.start()
    conn = UnixConnection(base / "api.sock")
    reused: list[int] = []
    try:
        assert call(conn, "GET", f"{V1}/discovery").status == 200
        server._stopping = True  # the moment close() has asked the loop to end
        wait_for(lambda: not server._loop.is_alive(), 10, message="the I/O loop ended")
        reused.extend(os.pipe())  # takes the lowest free numbers: those of a closed pipe
        os.set_blocking(reused[0], False)
        server.close()
        with pytest.raises(BlockingIOError):
            os.read(reused[0], 1)  # nothing was written into the pipe that took the number
        assert conn.sock.recv(1) == b""
        assert not (base / "api.sock").exists()
    finally:
        for fd in reused:
            os.close(fd)
        conn.close()
        server.close()
        dead.close()
        shutil.rmtree(base, ignore_errors=True)


def test_etcd_unreachable_is_503_and_close_ends_idle_connections():
    dead = Etcd([f"http://127.0.0.1:{free_port()}"], timeout=0.3)
    base = Path(tempfile.mkdtemp(prefix="fapi-"))
    server = ApiServer(Api(Registry(dead, "/dead/"), None, "m"), base / "api.sock")
    server.start()
    conn = UnixConnection(base / "api.sock")
    try:
        for method, path, body in [("GET", "/units", None), ("GET", "/machines", None),
                                   ("GET", "/state", None), ("GET", "/units/x.service", None),
                                   ("PUT", "/units/x.service", good_body())]:
            reply = call(conn, method, V1 + path, body, JSON if body else None)
            assert reply.status == 503, (method, path)
            assert "etcd" in reply.message and "unavailable" in reply.message
        assert call(conn, "GET", f"{V1}/discovery").status == 200, "no etcd needed"
        server.close()  # the keep-alive connection above is idle now: it ends too
        assert conn.sock.recv(1) == b""
        assert not (base / "api.sock").exists()
    finally:
        conn.close()
        server.close()
        dead.close()
        shutil.rmtree(base, ignore_errors=True)


# -- what a read touches ---------------------------------------------------------------------------
def stored_cluster(etcd_server, units: int, machines: int = 3,
                   registered: int | None = None) -> Registry:
    """A registry holding `units` jobs, each assigned to one of `machines` machines and
    reported by it, plus a second state per unit from another machine. The first
    `registered` machines (all by default) have a machine key; the others hold
    assignments without one, as a dead machine does until its units are moved."""
    registry = Registry(Etcd([etcd_server.url]), f"/reads-{uuid.uuid4().hex[:8]}/")
    keys, ops = registry.keys, registry.etcd.ops
    unit = parse_unit_file("[Service]\nExecStart=/bin/true\n")
    digest = content_hash(unit)
    state = encode({"hash": digest, "load": "loaded", "active": "active", "sub": "running"})
    writes = [ops.put(keys.unit(digest), serialize(unit))]
    writes += [ops.put(keys.machine(f"m{i}"), encode({"id": f"m{i}"}))
               for i in range(machines if registered is None else registered)]
    for i in range(units):
        name, machine = f"job@{i}.service", f"m{i % machines}"
        other = f"m{(i + 1) % machines}"
        writes += [ops.put(keys.job(name), encode({"name": name, "hash": digest,
                                                   "desired": "launched"})),
                   ops.put(keys.assignment(machine, name),
                           encode({"hash": digest, "desired": "launched"})),
                   ops.put(keys.state(name, machine), state),
                   ops.put(keys.state(name, other), state)]
    assert registry.commit_batches([], writes) == 0
    return registry


def keys_read_by(registry: Registry, call) -> tuple[int, int, object]:
    before_keys, before_requests = registry.etcd.keys_read, registry.etcd.requests
    result = call()
    return (registry.etcd.keys_read - before_keys, registry.etcd.requests - before_requests,
            result)


def reads_of_listing_and_one_unit(etcd_server, units: int, **layout) -> dict:
    """What a first page, a middle page, one unit and one unreported unit cost."""
    registry = stored_cluster(etcd_server, units, **layout)
    try:
        api = Api(registry, runner=None, machine_id="m0", page_size=50)
        costs: dict = {}
        keys, requests, first = keys_read_by(registry, lambda: api.list_units({}))
        assert first.status == 200 and len(first.body["units"]) == 50
        costs["first page"] = (keys, requests)
        token = first.body["nextPageToken"]
        keys, requests, second = keys_read_by(
            registry, lambda: api.list_units({"nextPageToken": [token]}))
        assert [u["name"] for u in second.body["units"]] == sorted(
            f"job@{i}.service" for i in range(units))[50:100]
        for unit in first.body["units"] + second.body["units"]:
            i = int(unit["name"][4:].split(".")[0])
            assert unit["machineID"] == f"m{i % 3}", unit
            assert unit["currentState"] == "launched", unit
        costs["next page"] = (keys, requests)
        keys, requests, one = keys_read_by(registry, lambda: api.get_unit("job@7.service"))
        assert one.status == 200 and one.body["machineID"] == "m1"
        assert one.body["currentState"] == "launched"
        costs["one unit"] = (keys, requests)
        registry.etcd.delete(registry.keys.state("job@8.service", "m2"))
        registry.etcd.delete(registry.keys.state("job@8.service", "m0"))
        keys, requests, one = keys_read_by(registry, lambda: api.get_unit("job@8.service"))
        assert one.status == 200 and one.body["machineID"] == "m2"  # reported nowhere yet
        assert one.body["currentState"] == "inactive"
        costs["unreported unit"] = (keys, requests)
        keys, requests, missing = keys_read_by(
            registry, lambda: answer(lambda: api.get_unit("nope.service")))
        assert missing.status == 404
        costs["missing unit"] = (keys, requests)
        keys, requests, states = keys_read_by(registry, lambda: api.list_states({}))
        assert len(states.body["states"]) == 50
        costs["state page"] = (keys, requests)
        return costs
    finally:
        registry.etcd.close()


def test_a_page_and_one_unit_cost_the_same_reads_for_100_or_1000_units(etcd_server):
    small = reads_of_listing_and_one_unit(etcd_server, 100)
    large = reads_of_listing_and_one_unit(etcd_server, 1000)
    assert ({k: requests for k, (_, requests) in small.items()}
            == {k: requests for k, (_, requests) in large.items()}), (small, large)
    for costs in (small, large):
        # A page: its jobs with the registered machines, then its states and its
        # assignments on each machine (the gaps between machines probed): two round trips
        # (and the unit body once, for the first), and only the keys of this page:
        # 51 jobs, 3 machines, 2 states and 1 assignment per unit (a spanned key or two
        # of the neighbours).
        assert costs["first page"][1] == 2 + 1, costs
        assert costs["next page"][1] == 2, costs
        for page in ("first page", "next page"):
            assert costs[page][0] <= 51 + 3 + 50 * 2 + 50 + 4, costs
        # One unit: its job, its two states, the machines; then its assignment.
        assert costs["one unit"] == (1 + 2 + 3 + 1, 2), costs
        assert costs["unreported unit"] == (1 + 3 + 1, 2), costs
        assert costs["missing unit"] == (3, 1), costs
        assert costs["state page"][0] <= 51, costs


def test_assignments_of_an_unregistered_machine_are_found(etcd_server):
    """A machine that died holds its assignments until they move, without a machine key:
    the probes between the registered machines find it (one more round trip)."""
    costs = reads_of_listing_and_one_unit(etcd_server, 300, registered=2)
    assert costs["next page"][1] == 3 and costs["unreported unit"][1] == 3, costs
    # Its units on the page show where they are assigned, and as launched: checked inside.


def test_pages_stay_consistent_while_units_come_and_go(etcd_server):
    """Walking the pages while other units are created and destroyed: every unit that exists
    throughout shows exactly once, in name order, with its own machine and states."""
    registry = stored_cluster(etcd_server, 250)
    try:
        api = Api(registry, runner=None, machine_id="m0", page_size=40)
        unit = parse_unit_file("[Service]\nExecStart=/bin/sleep 1\n")
        seen: list[dict] = []
        token = None
        churn = 0
        while True:
            reply = api.list_units({"nextPageToken": [token]} if token else {})
            assert reply.status == 200
            seen += reply.body["units"]
            registry.create_job(f"job@{churn}x.service", unit, JobState.INACTIVE)
            registry.destroy_job(f"job@{churn}x.service" if churn % 2 else
                                 f"job@{1000 + churn}.service")
            churn += 1
            token = reply.body.get("nextPageToken")
            if token is None:
                break
        names = [u["name"] for u in seen]
        assert names == sorted(names) and len(names) == len(set(names))
        stable = {f"job@{i}.service" for i in range(250)}
        assert stable <= set(names)
        by_name = {u["name"]: u for u in seen}
        for i in (0, 1, 77, 249):
            assert by_name[f"job@{i}.service"]["machineID"] == f"m{i % 3}"
            assert by_name[f"job@{i}.service"]["currentState"] == "launched"
    finally:
        registry.etcd.close()


def test_setting_a_desired_state_costs_two_requests_whatever_the_number_of_units(etcd_server):
    """`fleetctl start` of many units is one PUT each: its job read once, then written."""
    for units in (100, 1000):
        registry = stored_cluster(etcd_server, units)
        try:
            api = Api(registry, runner=None, machine_id="m0")
            registry.get_job("job@1.service")  # the unit body, read once per fleetd
            keys, requests, reply = keys_read_by(registry, lambda api=api: api.put_unit(
                "job@7.service", b'{"desiredState": "loaded"}', {}))
            assert reply.status == 204 and (keys, requests) == (1, 2), (units, keys, requests)
            assert registry.get_job("job@7.service").job.desired is JobState.LOADED
        finally:
            registry.etcd.close()


def test_a_stopping_fleetd_does_not_take_over_from_a_leader_that_resigns(fleets):
    """A cluster going down stops its fleetds together: one whose API is still closing
    must not campaign as the leader resigns (it would win, load every job, and resign)."""
    prefix = f"/api-{uuid.uuid4().hex[:8]}/"
    leader = fleets(etcd_key_prefix=prefix)
    wait_for(lambda: leader.server.engine.leadership.is_leader, 15, message="a leader")
    standby = fleets(etcd_key_prefix=prefix)
    won: list[bool] = []
    ensure = standby.server.engine.leadership.ensure
    standby.server.engine.leadership.ensure = lambda: won.append(ensure()) or won[-1]
    close_api = standby.server.api.close

    engine_thread = next(t for t in standby.server.threads if t.name == "engine")

    def leader_resigns_while_the_api_closes() -> None:
        leader.server.shutdown()
        # Until the standby's engine has either ended or won.
        wait_for(lambda: True in won or not engine_thread.is_alive(), 15,
                 message="the standby's engine ended or campaigned")
        close_api()

    standby.server.api.close = leader_resigns_while_the_api_closes
    standby.server.shutdown()
    assert True not in won, "the stopping standby took the leadership"
