"""fleetctl against a fake fleet API on a unix socket: arguments, tables, lifecycle, routing.

The fake implements just enough of fleet API v1 (paged listings, PUT/DELETE units,
/state, per-machine status and journal) to drive the client; units change their
current state a set number of polls after their desired state changes, so the
blocking commands are tested without real time passing (the clock is fake).
"""

from __future__ import annotations

import io
import json
import shutil
import socketserver
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from fleetd.fleetctl.client import Client, Endpoint, parse_endpoint
from fleetd.fleetctl.errors import FleetctlError, UsageError
from fleetd.fleetctl.main import build_parser, parse_arguments, resolve_endpoint, run
from fleetd.fleetctl.model import Machine
from fleetd.fleetctl.tables import Column, Table, layout, render_json, render_table
from fleetd.fleetctl.targets import expand, match_units, unit_name_of
from fleetd.unit.unitfile import content_hash, parse_unit_file

M1 = "0682a8f2c1e04d3b9a5e6f7081929394"
M2 = "d0ef05626a6f1d80b7e646e996bfc4d1"
HELLO = "[Unit]\nDescription=Hello World\n\n[Service]\nExecStart=/bin/sleep 1000\n"
HELLO2 = "[Unit]\nDescription=Hello again\n\n[Service]\nExecStart=/bin/sleep 2000\n"
TEMPLATE = "[Unit]\nDescription=web %i\n\n[Service]\nExecStart=/bin/sleep 3000\n"


def options_of(text: str) -> list[dict]:
    return [{"section": o.section, "name": o.name, "value": o.value}
            for o in parse_unit_file(text).options]


# -- the fake fleet API --------------------------------------------------------------------

@dataclass
class FakeFleet:
    """State of one fake fleetd; `flip_after` polls of GET /units/<name> until a unit
    reaches its desired state (units in `stuck` never do)."""

    machines: list[dict] = field(default_factory=list)
    units: dict[str, dict] = field(default_factory=dict)
    states: list[dict] = field(default_factory=list)
    statuses: dict[str, str] = field(default_factory=dict)
    journals: dict[str, list[str]] = field(default_factory=dict)
    page_size: int = 2
    flip_after: int = 2
    listing_polls: bool = False  # a walk of GET /units counts as a poll of each unit
    stuck: set[str] = field(default_factory=set)
    failing: set[str] = field(default_factory=set)  # systemd reports these failed once launched
    place_on: str = M1
    fail_with: tuple[int, str] | None = None
    requests: list[tuple[str, str, dict, object]] = field(default_factory=list)
    keep_alive: bool = False  # answer without "Connection: close"
    drop_kept: bool = False  # ... yet close the connection after each answer, silently
    connections: int = 0  # accepted so far
    countdown: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_unit(self, name: str, text: str, desired: str = "inactive",
                 current: str | None = None, machine: str = "") -> None:
        self.units[name] = {"name": name, "options": options_of(text), "desiredState": desired,
                            "currentState": current if current is not None else desired,
                            "machineID": machine}

    def paths(self, method: str | None = None) -> list[str]:
        return [p for m, p, _, _ in self.requests if method is None or m == method]

    def _page(self, key: str, items: list, query: dict) -> dict:
        start = int(query.get("nextPageToken", ["0"])[0] or 0)
        document = {key: items[start:start + self.page_size]}
        if start + self.page_size < len(items):
            document["nextPageToken"] = str(start + self.page_size)
        return document

    def _poll(self, unit: dict) -> None:
        name = unit["name"]
        if name in self.stuck or name not in self.countdown:
            return
        self.countdown[name] -= 1
        if self.countdown[name] <= 0:
            del self.countdown[name]
            unit["currentState"] = unit["desiredState"]
            unit["machineID"] = "" if unit["desiredState"] == "inactive" else self.place_on
            self.states = [s for s in self.states if s["name"] != name]
            if unit["desiredState"] != "inactive":
                active, sub = {"launched": ("active", "running"),
                               "loaded": ("inactive", "dead")}[unit["desiredState"]]
                if name in self.failing and unit["desiredState"] == "launched":
                    active, sub = "failed", "failed"
                self.states.append({"name": name, "hash": "", "machineID": self.place_on,
                                    "systemdLoadState": "loaded", "systemdActiveState": active,
                                    "systemdSubState": sub})

    def handle(self, method: str, path: str, query: dict, body: object) -> tuple[int, object]:
        with self.lock:
            self.requests.append((method, path, query, body))
            if self.fail_with is not None:
                status, message = self.fail_with
                return status, {"error": {"code": status, "message": message}}
            if not path.startswith("/fleet/v1/"):
                return 404, {"error": {"code": 404, "message": "not found"}}
            parts = [unquote(p) for p in path[len("/fleet/v1/"):].split("/")]
            if parts == ["machines"] and method == "GET":
                return 200, self._page("machines", self.machines, query)
            if parts == ["units"] and method == "GET":
                units = [self.units[k] for k in sorted(self.units)]
                if self.listing_polls and "nextPageToken" not in query:
                    for unit in units:  # a walk of the listing polls every unit
                        self._poll(unit)
                return 200, self._page("units", units, query)
            if parts == ["state"] and method == "GET":
                states = [s for s in self.states
                          if s["machineID"] == query.get("machineID", [s["machineID"]])[0]
                          and s["name"] == query.get("unitName", [s["name"]])[0]]
                return 200, self._page("states", states, query)
            if parts[0] == "units" and len(parts) == 3 and method == "GET":
                name, what = parts[1], parts[2]
                if what == "status" and name in self.statuses:
                    return 200, {"machineID": self.place_on, "status": self.statuses[name]}
                if what == "journal" and name in self.journals:
                    return 200, self.journals[name]
                return 404, {"error": {"code": 404, "message": f"{name} not here"}}
            if parts[0] == "units" and len(parts) == 2:
                return self._unit(method, parts[1], query, body)
            return 405, {"error": {"code": 405, "message": "no"}}

    def _unit(self, method: str, name: str, query: dict, body: object) -> tuple[int, object]:
        unit = self.units.get(name)
        if method == "GET":
            if unit is None:
                return 404, {"error": {"code": 404, "message": f"unit {name} does not exist"}}
            self._poll(unit)
            return 200, unit
        if method == "DELETE":
            if self.units.pop(name, None) is None:
                return 404, {"error": {"code": 404, "message": f"unit {name} does not exist"}}
            return 204, None
        if method == "PUT":
            assert isinstance(body, dict)
            desired = body["desiredState"]
            options = body.get("options")
            replace = query.get("replace") == ["true"]
            if unit is None:
                if not options:
                    return 404, {"error": {"code": 404, "message": f"unit {name} does not exist"}}
                self.units[name] = {"name": name, "options": options, "desiredState": desired,
                                    "currentState": "inactive", "machineID": ""}
                self.countdown[name] = self.flip_after
                return 201, None
            if options is not None and options != unit["options"]:
                if not replace:
                    return 409, {"error": {"code": 409, "message": "unit exists with different "
                                                                   "options"}}
                unit["options"] = options
            if unit["desiredState"] != desired:
                unit["desiredState"] = desired
                self.countdown[name] = self.flip_after
            return 204, None
        return 405, {"error": {"code": 405, "message": "no"}}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # BaseHTTPRequestHandler's signature
        pass

    def setup(self):  # socketserver's hook: once per connection
        super().setup()
        with self.server.fake.lock:
            self.server.fake.connections += 1

    def _serve(self, method: str) -> None:
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        if body is not None:
            assert self.headers.get("Content-Type") == "application/json"
        status, document = self.server.fake.handle(method, split.path, parse_qs(split.query),
                                                   body)
        if isinstance(document, list):  # a journal: stream it chunked
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()
            for chunk in document:
                data = chunk.encode("utf-8")
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            return
        data = b"" if document is None else json.dumps(document).encode("utf-8")
        self.send_response(status)
        if data:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        fake = self.server.fake
        if not fake.keep_alive:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        if fake.drop_kept:
            self.close_connection = True

    def do_GET(self):  # http.server's naming
        self._serve("GET")

    def do_PUT(self):
        self._serve("PUT")

    def do_DELETE(self):
        self._serve("DELETE")


class _QuietAboutGoneClients:
    def handle_error(self, request, client_address):  # socketserver's hook
        # A client that gave up (the request-timeout tests) is expected, not a failure.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class _Server(_QuietAboutGoneClients, socketserver.ThreadingMixIn,
              socketserver.UnixStreamServer):
    daemon_threads = True


class _TCPServer(_QuietAboutGoneClients, socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True


@pytest.fixture
def sockdir():
    # Unix socket paths are limited to ~107 bytes; pytest's tmp_path can be longer.
    path = tempfile.mkdtemp(prefix="fctl-", dir="/tmp")
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def serve(sockdir):
    servers = []

    def start(fake: FakeFleet, name: str = "fleet.sock", tcp: bool = False) -> str:
        if tcp:
            server = _TCPServer(("127.0.0.1", 0), _Handler)
            url = f"http://127.0.0.1:{server.server_address[1]}"
        else:
            server = _Server(str(sockdir / name), _Handler)
            url = f"unix://{sockdir / name}"
        server.fake = fake
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                  daemon=True)
        thread.start()
        servers.append((server, thread))
        return url

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        assert not thread.is_alive()


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def fleetctl(clock):
    def invoke(*argv: str, endpoint: str | None = None, env: dict | None = None) -> Result:
        out, err = io.StringIO(), io.StringIO()
        environment = dict(env or {})
        if endpoint is not None:
            environment["FLEETCTL_ENDPOINT"] = endpoint
        code = run(list(argv), env=environment, stdout=out, stderr=err, sleep=clock.sleep,
                   monotonic=clock.monotonic, socket_exists=lambda path: False)
        return Result(code, out.getvalue(), err.getvalue())

    return invoke


def two_machines() -> list[dict]:
    return [
        {"id": M2, "primaryIP": "10.0.0.3", "metadata": {}, "apiURL": ""},
        {"id": M1, "primaryIP": "192.168.50.14",
         "metadata": {"region": "us-west", "disk": "ssd"}, "apiURL": ""},
    ]


# -- argument handling -----------------------------------------------------------------

USAGE_ERRORS = [
    # id, argv, what stderr says
    ("no-command", [], "COMMAND"),
    ("unknown-command", ["list-unit"], "did you mean 'list-units'?"),
    ("start-without-units", ["start"], "the following arguments are required: UNIT"),
    ("unknown-option", ["list-units", "--bogus"], "unrecognized arguments: --bogus"),
    ("bad-field", ["list-units", "--fields", "unit,bogus"],
     "Invalid key in output format: 'bogus'; valid fields are"),
    ("empty-fields", ["list-machines", "--fields", ""], "--fields is empty"),
    ("bad-output", ["list-units", "--output", "xml"], "invalid choice: 'xml'"),
    ("journal-without-unit", ["journal"], "required: UNIT"),
    ("cat-two-units", ["cat", "a", "b"], "unrecognized arguments: b"),
    ("negative-timeout", ["--request-timeout", "-1", "list-units"], "must be more than 0"),
    ("no-block-and-attempts", ["start", "--no-block", "--block-attempts", "2", "x"],
     "not allowed with argument"),
    ("negative-lines", ["journal", "--lines", "-3", "x"], "must not be negative"),
    ("bad-unit-name", ["start", "a b"], "'a b' is not a unit name"),
    ("empty-prefix", ["destroy", "@1"], "the part before '@' or the type suffix is empty"),
    ("endpoint-missing-slash", ["--endpoint", "unix://var/run/fleet.sock", "list-units"],
     "unix:///var/run/fleet.sock"),
    ("endpoint-bad-scheme", ["--endpoint", "ftp://x", "list-units"], "neither unix:///"),
]


@pytest.mark.parametrize("argv, message", [r[1:] for r in USAGE_ERRORS],
                         ids=[r[0] for r in USAGE_ERRORS])
def test_usage_errors_exit_2(fleetctl, argv, message):
    result = fleetctl(*argv, endpoint="unix:///tmp/fleetctl-test-absent.sock")
    assert result.code == 2, result
    assert message in result.err
    assert result.out == ""


def test_global_options_work_after_the_command(fleetctl, serve):
    endpoint = serve(FakeFleet(machines=two_machines()))
    result = fleetctl("list-machines", "--endpoint", endpoint, "--no-legend")
    assert result.code == 0, result.err
    assert len(result.out.splitlines()) == 2


def test_help_exits_0(fleetctl, capsys):
    assert fleetctl("list-units", "--help").code == 0
    assert "--no-legend" in capsys.readouterr().out


def test_bad_unit_file_is_a_usage_error(fleetctl, serve, sockdir, monkeypatch):
    monkeypatch.chdir(sockdir)
    Path("broken.service").write_text("[Unit]\nthis is not an option\n")
    fake = FakeFleet()
    result = fleetctl("submit", "broken.service", endpoint=serve(fake))
    assert result.code == 2
    assert "broken.service: line 2" in result.err
    assert fake.paths("PUT") == []


ENDPOINTS = [
    # id, text, endpoint
    ("unix", "unix:///run/fleet/fleet.sock", Endpoint("unix", "/run/fleet/fleet.sock")),
    ("bare-path", "/var/run/fleet.sock", Endpoint("unix", "/var/run/fleet.sock")),
    ("file-scheme", "file:///x.sock", Endpoint("unix", "/x.sock")),
    ("http", "http://10.0.0.1:49153", Endpoint("http", "10.0.0.1:49153")),
    ("http-slash", "http://10.0.0.1:49153/", Endpoint("http", "10.0.0.1:49153")),
    ("https", "https://fleet.example:443", Endpoint("https", "fleet.example:443")),
]


@pytest.mark.parametrize("text, endpoint", [r[1:] for r in ENDPOINTS],
                         ids=[r[0] for r in ENDPOINTS])
def test_parse_endpoint(text, endpoint):
    assert parse_endpoint(text) == endpoint
    assert parse_endpoint(str(endpoint)) == endpoint


ENDPOINT_CHOICE = [
    # id, flag, env, default socket exists, endpoint or error
    ("flag-wins", "http://a:1", {"FLEETCTL_ENDPOINT": "http://b:2"}, True,
     Endpoint("http", "a:1")),
    ("env-next", None, {"FLEETCTL_ENDPOINT": "http://b:2"}, True, Endpoint("http", "b:2")),
    ("default-socket", None, {}, True, Endpoint("unix", "/var/run/fleet.sock")),
    ("nothing", None, {}, False, "set --endpoint or FLEETCTL_ENDPOINT"),
]


@pytest.mark.parametrize("flag, env, exists, expected", [r[1:] for r in ENDPOINT_CHOICE],
                         ids=[r[0] for r in ENDPOINT_CHOICE])
def test_resolve_endpoint(flag, env, exists, expected):
    if isinstance(expected, str):
        with pytest.raises(UsageError, match=expected):
            resolve_endpoint(flag, env, lambda path: exists)
    else:
        assert resolve_endpoint(flag, env, lambda path: exists) == expected


def test_missing_endpoint_exits_2_with_a_hint(fleetctl):
    result = fleetctl("list-units")
    assert result.code == 2
    assert "FLEETCTL_ENDPOINT" in result.err and "provision env" in result.err


def test_unreachable_endpoint_exits_1(fleetctl, sockdir):
    result = fleetctl("list-units", endpoint=f"unix://{sockdir}/absent.sock")
    assert result.code == 1
    assert f"cannot reach fleet at unix://{sockdir}/absent.sock" in result.err


# -- names and globs -------------------------------------------------------------------

NAMES = [
    # id, argument, unit name
    ("plain", "hello.service", "hello.service"),
    ("suffix-added", "hello", "hello.service"),
    ("instance", "apache@1", "apache@1.service"),
    ("template", "apache@", "apache@.service"),
    ("other-type", "db.socket", "db.socket"),
    ("dotted", "v1.2", "v1.2.service"),
    ("path", "units/web/hello.service", "hello.service"),
    ("path-without-suffix", "./units/hello", "hello.service"),
]


@pytest.mark.parametrize("arg, name", [r[1:] for r in NAMES], ids=[r[0] for r in NAMES])
def test_unit_name_of(arg, name):
    assert unit_name_of(arg) == name


EXISTING = ["web@1.service", "web@2.service", "web@.service", "db.service", "web.socket"]
GLOBS = [
    # id, pattern, matches
    ("instances", "web@*", ["web@1.service", "web@2.service"]),
    ("question-mark-without-suffix", "web@?", ["web@1.service", "web@2.service"]),
    ("with-suffix", "*.service", ["db.service", "web@1.service", "web@2.service"]),
    ("other-type", "web.*", ["web.socket"]),
    ("brackets", "web@[2]", ["web@2.service"]),
    ("nothing", "api@*", []),
]


@pytest.mark.parametrize("pattern, matches", [r[1:] for r in GLOBS], ids=[r[0] for r in GLOBS])
def test_match_units(pattern, matches):
    assert match_units(pattern, EXISTING) == matches


def test_expand_keeps_order_and_drops_duplicates():
    targets = expand(["db", "web@*", "web@1.service"], EXISTING, files=False)
    assert [t.name for t in targets] == ["db.service", "web@1.service", "web@2.service"]


def test_expand_unmatched_glob_fails():
    with pytest.raises(FleetctlError, match="No units match api@\\* in the cluster"):
        expand(["api@*"], EXISTING, files=False)


def test_expand_falls_back_to_local_files(sockdir):
    (sockdir / "a.service").write_text(HELLO)
    (sockdir / "b.service").write_text(HELLO)
    targets = expand([f"{sockdir}/*.service"], EXISTING, files=True)
    assert [(t.arg, t.name) for t in targets] == [(f"{sockdir}/a.service", "a.service"),
                                                  (f"{sockdir}/b.service", "b.service")]


# -- table formatting --------------------------------------------------------------------

def test_layout_pads_each_column_to_its_widest_cell_plus_two_spaces():
    text = layout([["UNIT", "MACHINE", "ACTIVE", "SUB"],
                   ["hello.service", "0682a8f2.../192.168.50.14", "active", "running"],
                   ["a1234567.service", "-", "-", "-"]])
    assert text == ("UNIT              MACHINE                    ACTIVE  SUB\n"
                    "hello.service     0682a8f2.../192.168.50.14  active  running\n"
                    "a1234567.service  -                          -       -\n")


def test_layout_never_pads_the_last_column():
    assert layout([["a", "b"], ["ccc", "dd"], ["e"]]) == "a    b\nccc  dd\ne\n"
    assert layout([]) == ""


def test_render_table_and_json_of_the_same_rows():
    columns = (Column("name", lambda r, full: r["name"] if full else r["name"][:3],
                      lambda r: r["name"]),
               Column("note", lambda r, full: r["note"], lambda r: r["note"] or None))
    table = Table(columns, ({"name": "abcdef", "note": "x\ty"}, {"name": "gh", "note": ""}))
    assert render_table(table) == "NAME  NOTE\nabc   x y\ngh    -\n"
    assert render_table(table, full=True, legend=False) == "abcdef  x y\ngh      -\n"
    assert json.loads(render_json(table)) == [{"name": "abcdef", "note": "x\ty"},
                                              {"name": "gh", "note": None}]


LIST_MACHINES = [
    # id, options, expected output
    ("default", [],
     "MACHINE      IP             METADATA\n"
     "0682a8f2...  192.168.50.14  disk=ssd,region=us-west\n"
     "d0ef0562...  10.0.0.3       -\n"),
    ("no-legend", ["--no-legend"],
     "0682a8f2...  192.168.50.14  disk=ssd,region=us-west\n"
     "d0ef0562...  10.0.0.3       -\n"),
    ("full", ["-l"],
     f"MACHINE                           IP             METADATA\n"
     f"{M1}  192.168.50.14  disk=ssd,region=us-west\n"
     f"{M2}  10.0.0.3       -\n"),
    ("fields-reordered", ["--fields", "ip,machine"],
     "IP             MACHINE\n"
     "192.168.50.14  0682a8f2...\n"
     "10.0.0.3       d0ef0562...\n"),
]


@pytest.mark.parametrize("options, expected", [r[1:] for r in LIST_MACHINES],
                         ids=[r[0] for r in LIST_MACHINES])
def test_list_machines(fleetctl, serve, options, expected):
    machines = two_machines() + [{"id": "f" * 32, "primaryIP": "10.0.0.9"}]
    fake = FakeFleet(machines=machines, page_size=2)
    result = fleetctl("list-machines", *options, endpoint=serve(fake))
    assert result.code == 0, result.err
    # three machines over two pages; compare the two we wrote the rows for
    lines = result.out.splitlines(keepends=True)
    assert "".join(line for line in lines if "ffffffff" not in line) == expected
    assert len(fake.paths("GET")) == 2  # followed nextPageToken once


def test_list_machines_json(fleetctl, serve):
    result = fleetctl("list-machines", "--output", "json",
                      endpoint=serve(FakeFleet(machines=two_machines())))
    assert result.code == 0
    assert json.loads(result.out) == [
        {"machine": M1, "ip": "192.168.50.14", "metadata": {"disk": "ssd", "region": "us-west"}},
        {"machine": M2, "ip": "10.0.0.3", "metadata": {}},
    ]


def unit_fleet() -> FakeFleet:
    fake = FakeFleet(machines=two_machines())
    fake.add_unit("hello.service", HELLO, "launched", "launched", M1)
    fake.add_unit("idle.service", HELLO2)
    fake.add_unit("everywhere.service", HELLO + "\n[X-Fleet]\nGlobal=true\n", "launched", "")
    fake.states = [
        {"name": "hello.service", "hash": content_hash(parse_unit_file(HELLO)),
         "machineID": M1, "systemdLoadState": "loaded", "systemdActiveState": "active",
         "systemdSubState": "running"},
        {"name": "everywhere.service", "hash": "a" * 40, "machineID": M2,
         "systemdLoadState": "loaded", "systemdActiveState": "activating",
         "systemdSubState": "start-pre"},
        {"name": "everywhere.service", "hash": "a" * 40, "machineID": M1,
         "systemdLoadState": "loaded", "systemdActiveState": "active",
         "systemdSubState": "running"},
    ]
    return fake


HELLO_HASH = content_hash(parse_unit_file(HELLO))
IDLE_HASH = content_hash(parse_unit_file(HELLO2))
GLOBAL_HASH = content_hash(parse_unit_file(HELLO + "\n[X-Fleet]\nGlobal=true\n"))

LIST_UNIT_FILES = [
    ("default", [],
     "UNIT                HASH     DSTATE    STATE     TARGET\n"
     f"everywhere.service  {GLOBAL_HASH[:7]}  launched  -         global\n"
     f"hello.service       {HELLO_HASH[:7]}  launched  launched  0682a8f2.../192.168.50.14\n"
     f"idle.service        {IDLE_HASH[:7]}  inactive  inactive  -\n"),
    ("fields-no-legend", ["--no-legend", "--fields", "unit,target,desc"],
     "everywhere.service  global                     Hello World\n"
     "hello.service       0682a8f2.../192.168.50.14  Hello World\n"
     "idle.service        -                          Hello again\n"),
    ("full", ["--full", "--fields", "hash,target"],
     f"HASH                                      TARGET\n"
     f"{GLOBAL_HASH}  global\n"
     f"{HELLO_HASH}  {M1}/192.168.50.14\n"
     f"{IDLE_HASH}  -\n"),
]


@pytest.mark.parametrize("options, expected", [r[1:] for r in LIST_UNIT_FILES],
                         ids=[r[0] for r in LIST_UNIT_FILES])
def test_list_unit_files(fleetctl, serve, options, expected):
    result = fleetctl("list-unit-files", *options, endpoint=serve(unit_fleet()))
    assert result.code == 0, result.err
    assert result.out == expected


def test_list_unit_files_json(fleetctl, serve):
    result = fleetctl("list-unit-files", "--output", "json", "--fields", "unit,hash,target,state",
                      endpoint=serve(unit_fleet()))
    assert json.loads(result.out) == [
        {"unit": "everywhere.service", "hash": GLOBAL_HASH, "target": "global", "state": None},
        {"unit": "hello.service", "hash": HELLO_HASH, "target": M1, "state": "launched"},
        {"unit": "idle.service", "hash": IDLE_HASH, "target": None, "state": "inactive"},
    ]


LIST_UNITS = [
    ("default", [],
     "UNIT                MACHINE                    ACTIVE      SUB\n"
     "everywhere.service  0682a8f2.../192.168.50.14  active      running\n"
     "everywhere.service  d0ef0562.../10.0.0.3       activating  start-pre\n"
     "hello.service       0682a8f2.../192.168.50.14  active      running\n"),
    ("no-legend-fields", ["--no-legend", "--fields", "sub,unit,hash"],
     "running    everywhere.service  aaaaaaa\n"
     "start-pre  everywhere.service  aaaaaaa\n"
     f"running    hello.service       {HELLO_HASH[:7]}\n"),
]


@pytest.mark.parametrize("options, expected", [r[1:] for r in LIST_UNITS],
                         ids=[r[0] for r in LIST_UNITS])
def test_list_units(fleetctl, serve, options, expected):
    result = fleetctl("list-units", *options, endpoint=serve(unit_fleet()))
    assert result.code == 0, result.err
    assert result.out == expected


def test_list_units_json_is_not_abbreviated(fleetctl, serve):
    result = fleetctl("list-units", "--output", "json", "--fields", "unit,machine,ip",
                      endpoint=serve(unit_fleet()))
    assert json.loads(result.out)[2] == {"unit": "hello.service", "machine": M1,
                                         "ip": "192.168.50.14"}


def test_empty_listing_prints_the_legend_only(fleetctl, serve):
    result = fleetctl("list-units", endpoint=serve(FakeFleet()))
    assert (result.code, result.out) == (0, "UNIT  MACHINE  ACTIVE  SUB\n")


def test_api_error_exits_1_with_the_server_message(fleetctl, serve):
    fake = FakeFleet(fail_with=(500, "etcd is unavailable"))
    result = fleetctl("list-unit-files", endpoint=serve(fake))
    assert result.code == 1
    assert "500 Internal Server Error: etcd is unavailable" in result.err


# -- submit ----------------------------------------------------------------------------

@pytest.fixture
def workdir(sockdir, monkeypatch):
    work = sockdir / "units"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def test_submit_creates_inactive_units_silently(fleetctl, serve, workdir):
    Path("hello.service").write_text("# a comment\n" + HELLO)
    fake = FakeFleet()
    result = fleetctl("submit", "hello.service", endpoint=serve(fake))
    assert (result.code, result.out, result.err) == (0, "", "")
    put = [(p, q, b) for m, p, q, b in fake.requests if m == "PUT"]
    assert put == [("/fleet/v1/units/hello.service", {"replace": ["false"]},
                    {"desiredState": "inactive", "options": options_of(HELLO)})]


def test_submit_same_content_again_changes_nothing(fleetctl, serve, workdir):
    Path("hello.service").write_text(HELLO)
    fake = FakeFleet()
    fake.add_unit("hello.service", HELLO, "launched", "launched", M1)
    result = fleetctl("submit", "hello", endpoint=serve(fake))
    assert (result.code, result.err) == (0, "")
    assert fake.paths("PUT") == []


def test_submit_refuses_to_overwrite_a_different_unit(fleetctl, serve, workdir):
    Path("new.service").write_text(HELLO)
    Path("hello.service").write_text(HELLO2)
    fake = FakeFleet()
    fake.add_unit("hello.service", HELLO)
    result = fleetctl("submit", "new.service", "hello.service", endpoint=serve(fake))
    assert result.code == 1
    assert result.err == ("Unit hello.service in registry differs from local unit file "
                          "hello.service. Add --replace to override.\n")
    assert fake.paths("PUT") == []  # nothing half-done: new.service was not created either
    assert fake.units["hello.service"]["options"] == options_of(HELLO)


def test_submit_replace(fleetctl, serve, workdir):
    Path("hello.service").write_text(HELLO2)
    fake = FakeFleet()
    fake.add_unit("hello.service", HELLO)
    result = fleetctl("submit", "--replace", "hello.service", endpoint=serve(fake))
    assert result.code == 0, result.err
    assert fake.units["hello.service"]["options"] == options_of(HELLO2)
    assert [q for m, _, q, _ in fake.requests if m == "PUT"] == [{"replace": ["true"]}]


def test_submit_replace_of_a_running_unit_needs_start(fleetctl, serve, workdir):
    Path("hello.service").write_text(HELLO2)
    fake = FakeFleet()
    fake.add_unit("hello.service", HELLO, "launched", "launched", M1)
    result = fleetctl("submit", "--replace", "hello.service", endpoint=serve(fake))
    assert result.code == 1
    assert "Unable to replace Unit hello.service in state 'launched'" in result.err


def test_submit_conflict_from_the_server(fleetctl, serve, workdir):
    """Someone else submitted between our look and our PUT: the server's 409 is a conflict."""
    Path("hello.service").write_text(HELLO)
    fake = FakeFleet()
    original = fake._unit

    def racing(method, name, query, body):
        if method == "PUT" and name not in fake.units:
            fake.add_unit(name, HELLO2)
        return original(method, name, query, body)

    fake._unit = racing
    result = fleetctl("submit", "hello.service", endpoint=serve(fake))
    assert result.code == 1
    assert "Unit hello.service was submitted with different content meanwhile" in result.err


def test_submit_instance_uses_the_local_template(fleetctl, serve, workdir):
    Path("web@.service").write_text(TEMPLATE)
    fake = FakeFleet()
    result = fleetctl("submit", "web@1.service", "web@2", endpoint=serve(fake))
    assert result.code == 0, result.err
    assert sorted(fake.units) == ["web@1.service", "web@2.service"]
    assert fake.units["web@1.service"]["options"] == options_of(TEMPLATE)


def test_submit_of_a_file_not_named_like_a_unit_is_refused(fleetctl, serve, workdir):
    Path("bad.txt").write_text(HELLO)
    Path("hello").write_text(HELLO)
    fake = FakeFleet()
    for arg, hint in (("bad.txt", "bad.service"), ("hello", "hello.service")):
        result = fleetctl("submit", arg, endpoint=serve(fake, f"{arg}.sock"))
        assert result.code == 2
        assert f"fleetctl: {arg} is not a unit file: its name must be a unit name" in result.err
        assert f"rename it, e.g. to {hint}" in result.err
    assert fake.paths("PUT") == [] and fake.units == {}


@pytest.mark.parametrize("text, says", [("", "is empty"), ("\n  \n", "is empty"),
                                        ("# only a comment\n", "has no options (only comments)")])
def test_submit_of_an_empty_file_says_so(fleetctl, serve, workdir, text, says):
    Path("empty.service").write_text(text)
    fake = FakeFleet()
    result = fleetctl("submit", "empty.service", endpoint=serve(fake))
    assert result.code == 2
    assert f"fleetctl: empty.service {says}: a unit file needs at least" in result.err
    assert fake.paths("PUT") == []


def test_submit_unknown_file_exits_1(fleetctl, serve, workdir):
    result = fleetctl("submit", "nothing.service", endpoint=serve(FakeFleet()))
    assert result.code == 1
    assert "Unable to find Unit nothing.service in the cluster or on disk" in result.err


# -- start, load, stop, unload, destroy -------------------------------------------------

def test_start_submits_and_waits_until_launched(fleetctl, serve, workdir, clock):
    Path("hello.service").write_text(HELLO)
    fake = FakeFleet(machines=two_machines(), flip_after=3)
    result = fleetctl("start", "hello.service", endpoint=serve(fake))
    assert result.code == 0, result.err
    assert result.out == "Unit hello.service launched on 0682a8f2.../192.168.50.14\n"
    assert fake.units["hello.service"]["desiredState"] == "launched"
    assert clock.sleeps == [0.1, 0.2]  # two pauses, growing, before the third poll


def test_start_pauses_grow_to_fleets_half_second_and_no_further(fleetctl, serve, workdir,
                                                                clock):
    Path("hello.service").write_text(HELLO)
    fake = FakeFleet(machines=two_machines(), flip_after=6)
    result = fleetctl("start", "hello.service", endpoint=serve(fake))
    assert result.code == 0, result.err
    assert clock.sleeps == [0.1, 0.2, 0.4, 0.5, 0.5]


def test_start_times_out_after_block_attempts(fleetctl, serve, workdir, clock):
    fake = FakeFleet(machines=two_machines(), stuck={"hello.service"})
    fake.add_unit("hello.service", HELLO, "loaded", "loaded", M1)
    fake.states = [{"name": "hello.service", "hash": "", "machineID": M1,
                    "systemdLoadState": "loaded", "systemdActiveState": "failed",
                    "systemdSubState": "failed"}]
    result = fleetctl("start", "--block-attempts", "3", "hello", endpoint=serve(fake))
    assert result.code == 1
    assert result.out == ""
    assert result.err == ("Timed out waiting for unit hello.service to report state launched "
                          "after 3 attempts (--block-attempts); it is loaded on "
                          "0682a8f2.../192.168.50.14 (systemd: failed/failed).\n")
    assert len(clock.sleeps) == 2


def test_start_times_out_after_block_timeout(fleetctl, serve, workdir, clock):
    fake = FakeFleet(machines=two_machines(), stuck={"hello.service"})
    fake.add_unit("hello.service", HELLO)
    result = fleetctl("start", "--block-timeout", "5", "hello", endpoint=serve(fake))
    assert result.code == 1
    assert "to report state launched after 5s (--block-timeout); it is inactive" in result.err
    assert ("not scheduled yet, though machine 0682a8f2.../192.168.50.14 can run it (is a "
            "fleetd with the engine enabled running?)") in result.err
    assert clock.now == pytest.approx(5.0)


def test_start_glob_over_existing_instances(fleetctl, serve, workdir):
    fake = FakeFleet(machines=two_machines(), flip_after=1)
    for name in ("web@1.service", "web@2.service", "web@.service", "db.service"):
        fake.add_unit(name, TEMPLATE)
    result = fleetctl("start", "web@*", endpoint=serve(fake))
    assert result.code == 0, result.err
    assert result.out == ("Unit web@1.service launched on 0682a8f2.../192.168.50.14\n"
                          "Unit web@2.service launched on 0682a8f2.../192.168.50.14\n")
    assert fake.units["db.service"]["desiredState"] == "inactive"
    assert fake.units["web@.service"]["desiredState"] == "inactive"


def test_start_of_many_units_waits_by_reading_the_listings_not_each_unit(fleetctl, serve,
                                                                         workdir):
    fake = FakeFleet(machines=two_machines(), flip_after=2, page_size=50, listing_polls=True)
    names = [f"web@{i}.service" for i in range(1, 41)]
    for name in ["web@.service", *names]:
        fake.add_unit(name, TEMPLATE)
    result = fleetctl("start", "web@*", endpoint=serve(fake))
    assert result.code == 0, result.err
    assert sorted(result.out.splitlines()) == sorted(
        f"Unit {n} launched on 0682a8f2.../192.168.50.14" for n in names)
    singles = [r for r in fake.requests if r[0] == "GET" and r[1].startswith("/fleet/v1/units/")
               or r[0] == "GET" and r[1] == "/fleet/v1/state" and "unitName" in r[2]]
    assert singles == [], singles[:3]


def test_start_instance_from_a_template_in_the_cluster(fleetctl, serve, workdir):
    fake = FakeFleet(machines=two_machines(), flip_after=1)
    fake.add_unit("apache@.service", TEMPLATE)
    result = fleetctl("start", "apache@1", endpoint=serve(fake))
    assert result.code == 0, result.err
    assert result.out == "Unit apache@1.service launched on 0682a8f2.../192.168.50.14\n"
    assert fake.units["apache@1.service"]["options"] == options_of(TEMPLATE)


def test_start_no_block_and_global(fleetctl, serve, workdir, clock):
    fake = FakeFleet(machines=two_machines())
    fake.add_unit("hello.service", HELLO)
    fake.add_unit("all.service", HELLO + "\n[X-Fleet]\nGlobal=true\n")
    result = fleetctl("start", "--no-block", "hello", "all", endpoint=serve(fake))
    assert result.code == 0, result.err
    assert result.out == ("Triggered unit hello.service start\n"
                          "Triggered global unit all.service start\n")
    assert clock.sleeps == []


def test_load_waits_for_loaded(fleetctl, serve, workdir):
    fake = FakeFleet(machines=two_machines(), place_on=M2)
    fake.add_unit("hello.service", HELLO)
    result = fleetctl("load", "hello.service", endpoint=serve(fake))
    assert (result.code, result.out) == (0, "Unit hello.service loaded on d0ef0562.../10.0.0.3\n")


def test_start_of_an_already_launched_unit_is_silent(fleetctl, serve, workdir):
    fake = FakeFleet(machines=two_machines())
    fake.add_unit("hello.service", HELLO, "launched", "launched", M1)
    result = fleetctl("start", "hello", endpoint=serve(fake))
    assert (result.code, result.out, result.err) == (0, "", "")
    assert fake.paths("PUT") == []


@pytest.mark.parametrize("command", ["start", "load"])
def test_a_template_is_refused_at_once(fleetctl, serve, workdir, command):
    Path("web@.service").write_text(TEMPLATE)
    fake = FakeFleet(machines=two_machines())
    result = fleetctl(command, "web@.service", endpoint=serve(fake))
    assert result.code == 2
    assert ("web@.service: a template cannot be "
            f"{'started' if command == 'start' else 'loaded'}") in result.err
    assert f"{command} an instance such as web@1.service" in result.err
    assert fake.requests == []


def test_start_of_a_unit_that_fails_ends_with_its_state_and_log(fleetctl, serve, workdir):
    Path("hello.service").write_text(HELLO)
    machine = FakeFleet(place_on=M1)
    machine.journals["hello.service"] = ["Jan 10 08:58:46 core-01 sh[4964]: cannot bind\n"]
    fake = FakeFleet(machines=two_machines(), failing={"hello.service"})
    fake.machines[1]["apiURL"] = serve(machine, "m1.sock")
    result = fleetctl("start", "hello.service", endpoint=serve(fake))
    assert result.code == 1
    assert result.out == "Unit hello.service launched on 0682a8f2.../192.168.50.14\n"
    assert result.err == ("Unit hello.service failed on 0682a8f2.../192.168.50.14 (systemd: "
                          "failed/failed); its last log lines:\n"
                          "    Jan 10 08:58:46 core-01 sh[4964]: cannot bind\n")


def test_start_of_an_unschedulable_unit_names_the_constraint(fleetctl, serve, workdir, clock):
    Path("eu.service").write_text(HELLO + "\n[X-Fleet]\nMachineMetadata=region=eu\n")
    fake = FakeFleet(machines=two_machines(), stuck={"eu.service"})
    result = fleetctl("start", "eu.service", endpoint=serve(fake))  # the default policy
    assert result.code == 1
    assert result.err == ("Unit eu.service cannot be scheduled: no machine has metadata "
                          "region=eu; no machine can run it as its [X-Fleet] section asks "
                          "(see `fleetctl list-machines`).\n")
    assert 5 <= clock.now < 10, "the scheduler said so for the grace period, then we stop"


def test_stop_and_unload_of_a_global_unit_say_their_verb(fleetctl, serve, workdir):
    fake = FakeFleet(machines=two_machines())
    fake.add_unit("all.service", HELLO + "\n[X-Fleet]\nGlobal=true\n", "launched")
    endpoint = serve(fake)
    stopped = fleetctl("stop", "all", endpoint=endpoint)
    assert (stopped.code, stopped.out) == (0, "Triggered global unit all.service stop\n")
    unloaded = fleetctl("unload", "all", endpoint=endpoint)
    assert (unloaded.code, unloaded.out) == (0, "Triggered global unit all.service unload\n")


def test_stop_and_unload(fleetctl, serve, workdir):
    fake = FakeFleet(machines=two_machines())
    fake.add_unit("hello.service", HELLO, "launched", "launched", M1)
    endpoint = serve(fake)
    stopped = fleetctl("stop", "hello.service", endpoint=endpoint)
    assert (stopped.code, stopped.out) == (0, "Unit hello.service loaded on "
                                              "0682a8f2.../192.168.50.14\n")
    assert stopped.err == "Successfully stopped units [hello.service].\n"
    unloaded = fleetctl("unload", "hello", endpoint=endpoint)
    assert (unloaded.code, unloaded.out) == (0, "Unit hello.service inactive\n")
    assert unloaded.err == "Successfully unloaded units [hello.service].\n"
    again = fleetctl("stop", "hello", endpoint=endpoint)
    assert again.code == 1
    assert "Unable to stop unit hello.service in state inactive" in again.err


@pytest.mark.parametrize("command", ["stop", "unload", "destroy"])
def test_missing_units_are_fleets_units_not_found_in_registry(fleetctl, serve, command):
    fake = FakeFleet()
    result = fleetctl(command, "ghost", endpoint=serve(fake))
    assert (result.code, result.out, result.err) == (0, "", "Units not found in registry\n")
    assert fake.paths() == ["/fleet/v1/units"]
    nothing = fleetctl(command, "ghost@*", endpoint=serve(fake, "second.sock"))
    assert (nothing.code, nothing.err) == (0, "No units match ghost@* in the cluster.\n"
                                              "Units not found in registry\n")


def test_destroy(fleetctl, serve):
    fake = FakeFleet()
    fake.add_unit("hello.service", HELLO)
    result = fleetctl("destroy", "hello", endpoint=serve(fake))
    assert (result.code, result.out, result.err) == (0, "Destroyed hello.service\n", "")
    assert fake.units == {}


def test_destroy_unknown_unit(fleetctl, serve):
    fake = FakeFleet()
    fake.add_unit("hello.service", HELLO)
    result = fleetctl("destroy", "x", "hello.service", endpoint=serve(fake))
    assert result.code == 0
    assert result.err == "Unit x.service not found in registry; skipped\n"
    assert result.out == "Destroyed hello.service\n"  # the others are still destroyed


def test_destroy_glob_takes_the_template_stop_glob_skips_it(fleetctl, serve):
    fake = FakeFleet(machines=two_machines(), flip_after=1)
    fake.add_unit("web@.service", TEMPLATE)
    for name in ("web@1.service", "web@2.service"):
        fake.add_unit(name, TEMPLATE, "launched", "launched", M1)
    fake.add_unit("db.service", HELLO, "launched", "launched", M1)
    endpoint = serve(fake)
    stopped = fleetctl("stop", "web@*", endpoint=endpoint)
    assert stopped.code == 0, stopped.err
    assert stopped.err == "Successfully stopped units [web@1.service web@2.service].\n"
    assert fake.units["web@.service"]["desiredState"] == "inactive"
    template = fleetctl("stop", "web@.service", endpoint=endpoint)
    assert (template.code, template.err) == (
        0, "Unit web@.service is a template: it never runs; skipped\n")
    destroyed = fleetctl("destroy", "web@*", endpoint=endpoint)
    assert destroyed.out == ("Destroyed web@.service\nDestroyed web@1.service\n"
                             "Destroyed web@2.service\n")
    assert sorted(fake.units) == ["db.service"]


# -- cat, status, journal ----------------------------------------------------------------

def test_cat_prints_the_unit_file(fleetctl, serve):
    fake = FakeFleet()
    fake.add_unit("hello.service", "[Unit]\n# comment\nDescription=Hello World\n[Service]\n"
                                   "ExecStart=/bin/sleep 1000\n")
    result = fleetctl("cat", "hello", endpoint=serve(fake))
    assert (result.code, result.out) == (0, HELLO)
    missing = fleetctl("cat", "nope.service", endpoint=serve(fake, "second.sock"))
    assert (missing.code, missing.err) == (1, "Unit nope.service does not exist.\n")


@pytest.fixture(params=["unix", "tcp"])
def two_fleetds(serve, request):
    """A cluster endpoint and the fleetd of machine M1 (where hello.service runs), whose
    apiURL is a unix socket or http://host:port."""
    local = FakeFleet(place_on=M1)
    local.statuses["hello.service"] = "● hello.service - Hello World\n   Active: active (running)"
    local.journals["hello.service"] = ["Jan 10 08:58:46 core-03 hello[4964]: Hello World\n",
                                       "Jan 10 08:58:47 core-03 hello[4964]: Hellö",
                                       " World\n"]
    local_url = serve(local, "m1.sock", tcp=request.param == "tcp")
    cluster = unit_fleet()
    cluster.machines[1]["apiURL"] = local_url
    cluster.statuses["hello.service"] = "WRONG MACHINE"
    cluster.journals["hello.service"] = ["WRONG MACHINE"]
    return serve(cluster), cluster, local


def test_status_asks_the_machine_running_the_unit(fleetctl, two_fleetds):
    endpoint, cluster, local = two_fleetds
    result = fleetctl("status", "hello.service", endpoint=endpoint)
    assert result.code == 0, result.err
    assert result.out == "● hello.service - Hello World\n   Active: active (running)\n"
    assert local.paths() == ["/fleet/v1/units/hello.service/status"]
    assert not any(p.endswith("/status") for p in cluster.paths())


def test_journal_streams_from_the_machine_running_the_unit(fleetctl, two_fleetds):
    endpoint, cluster, local = two_fleetds
    result = fleetctl("journal", "--lines", "20", "-f", "hello", endpoint=endpoint)
    assert result.code == 0, result.err
    assert result.out == ("Jan 10 08:58:46 core-03 hello[4964]: Hello World\n"
                          "Jan 10 08:58:47 core-03 hello[4964]: Hellö World\n")
    (method, path, query, _), = local.requests
    assert (path, query) == ("/fleet/v1/units/hello.service/journal",
                             {"lines": ["20"], "follow": ["true"]})


STATUS_REFUSALS = [
    # id, unit, message
    ("unknown", "ghost", "Unit ghost.service does not exist."),
    ("global", "everywhere", "Unable to determine status of global unit everywhere.service."),
    ("not-loaded", "idle", "Unit idle.service does not appear to be loaded."),
]


@pytest.mark.parametrize("unit, message", [r[1:] for r in STATUS_REFUSALS],
                         ids=[r[0] for r in STATUS_REFUSALS])
def test_status_refusals(fleetctl, two_fleetds, unit, message):
    endpoint, _, local = two_fleetds
    for argv in (["status", unit], ["journal", unit]):
        result = fleetctl(*argv, endpoint=endpoint)
        assert (result.code, result.err) == (1, message + "\n")
    assert local.requests == []


def test_status_without_api_url_says_so(fleetctl, serve):
    fake = unit_fleet()
    result = fleetctl("status", "hello", endpoint=serve(fake))
    assert result.code == 1
    assert "does not advertise an API address (apiURL)" in result.err


def test_machine_records_parse_optional_fields():
    machine = Machine.from_json({"id": M1})
    assert (machine.primary_ip, dict(machine.metadata), machine.api_url) == ("", {}, "")
    with pytest.raises(FleetctlError, match="'id' is missing"):
        Machine.from_json({"primaryIP": "1.2.3.4"})



def test_a_listing_reads_its_pages_on_one_kept_connection(fleetctl, serve, workdir):
    fake = FakeFleet(machines=two_machines(), page_size=3, keep_alive=True)
    for i in range(10):
        fake.add_unit(f"web@{i}.service", TEMPLATE)
    result = fleetctl("list-unit-files", "--no-legend", endpoint=serve(fake))
    assert result.code == 0, result.err
    assert len(result.out.splitlines()) == 10
    assert fake.paths("GET").count("/fleet/v1/units") == 4
    assert fake.connections == 1, fake.connections  # 4 pages and the machines


def test_a_listing_asks_for_large_pages_and_follows_a_server_that_ignores_it(
        fleetctl, serve, workdir):
    """fleet's server pages by 100 whatever is asked (it reads only nextPageToken): every
    page is still read, each asking for 1,000 items; ours answers 1,000 units at once."""
    fake = FakeFleet(machines=two_machines() + [{"id": "m3"}, {"id": "m4"}], page_size=3)
    for i in range(10):
        fake.add_unit(f"web@{i}.service", TEMPLATE, desired="launched", machine=M1)
    fake.states = [{"name": f"web@{i}.service", "hash": "", "machineID": M1,
                    "systemdLoadState": "loaded", "systemdActiveState": "active",
                    "systemdSubState": "running"} for i in range(7)]
    for command in ("list-unit-files", "list-units"):
        result = fleetctl(command, "--no-legend", endpoint=serve(fake, name=f"{command}.sock"))
        assert result.code == 0, result.err
        assert len(result.out.splitlines()) == (10 if command == "list-unit-files" else 7)
    paths = fake.paths("GET")
    assert [paths.count(f"/fleet/v1/{what}") for what in ("units", "machines", "state")] == [
        4, 2 + 2, 3]
    for _, path, query, _ in fake.requests:
        assert query.get("pageSize") == ["1000"], (path, query)
    # A caller may ask for fleet's own page size (bench/scale.py reads pages as fleet does).
    client = Client(parse_endpoint(serve(fake, name="paged.sock")))
    try:
        assert len(client.paged("/fleet/v1/units", "units", {"pageSize": "100"})) == 10
    finally:
        client.close()
    assert fake.requests[-1][2]["pageSize"] == ["100"]


def test_a_kept_connection_the_server_closed_is_opened_again(fleetctl, serve, workdir):
    fake = FakeFleet(machines=two_machines(), page_size=3, keep_alive=True, drop_kept=True)
    for i in range(10):
        fake.add_unit(f"web@{i}.service", TEMPLATE)
    result = fleetctl("list-unit-files", "--no-legend", endpoint=serve(fake))
    assert result.code == 0, result.err
    assert len(result.out.splitlines()) == 10
    assert fake.paths("GET").count("/fleet/v1/units") == 4  # none lost, none sent twice


def test_start_of_many_units_sends_their_puts_side_by_side(fleetctl, serve, workdir):
    """Each PUT is one unit's desired state; several are in flight at once, on kept
    connections (one per sender), and every unit is started exactly once."""
    fake = FakeFleet(machines=two_machines(), flip_after=1, page_size=50,
                     listing_polls=True, keep_alive=True)
    names = [f"web@{i}.service" for i in range(1, 41)]
    for name in ["web@.service", *names]:
        fake.add_unit(name, TEMPLATE)
    result = fleetctl("start", "--no-block", "web@*", endpoint=serve(fake))
    assert result.code == 0, result.err
    assert result.out.splitlines() == [f"Triggered unit {n} start" for n in sorted(names)]
    puts = fake.paths("PUT")
    assert sorted(puts) == sorted(f"/fleet/v1/units/{n}" for n in names)
    assert all(fake.units[n]["desiredState"] == "launched" for n in names)
    assert fake.connections <= 1 + 8, fake.connections


@pytest.mark.parametrize("argv", [
    ["list-unit-files", "--no-legend", "--fields", "unit,hash"],
    ["--endpoint", "http://127.0.0.1:1", "list-units", "-l", "--output", "json"],
    ["start", "--no-block", "web@*", "list-units"],  # a unit named like a command
    ["--tunnel", "start", "list-machines"],  # a global option's value named like one
    ["stop", "--block-attempts", "3", "--request-timeout", "2", "a", "b"],
    ["journal", "-f", "--lines", "5", "web@1"],
])
def test_a_command_line_parses_alike_with_its_command_parser_alone(argv):
    assert parse_arguments(argv) == build_parser().parse_args(argv)


@pytest.mark.parametrize("argv", [["list-units", "--nope"], ["start"], ["lsit-units"],
                                  ["start", "--block-attempts", "-1", "x"]])
def test_a_bad_command_line_fails_alike_with_its_command_parser_alone(argv):
    with pytest.raises(UsageError) as alone:
        parse_arguments(argv)
    with pytest.raises(UsageError) as whole:
        build_parser().parse_args(argv)
    assert (alone.value.message, alone.value.usage) == (whole.value.message, whole.value.usage)
