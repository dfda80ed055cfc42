"""fleetd spoken to exactly as fleet v1.0.0's own fleetctl speaks to it.

`GoClient` sends the requests of fleet's `client/http.go` through its generated
`schema/v1-gen.go` (every call carries `alt=json`; bodies are Go's JSON of
`schema.Unit` with `omitempty`: field order currentState, desiredState, machineID,
name, options; options as name, section, value; empty strings left out), over one
keep-alive connection on the unix socket as Go's transport does. `FleetV1` is the
command logic of fleet's `fleetctl/*.go` on top of it: which calls each command
makes, in which order, what it waits for (GET units/<name> every 0.5 s until the
unit's currentState, or desiredState for a global unit; after `start`, GET
state/<name> until systemd reports active/loaded) and what it prints. Each test
checks the request sequence and the cluster's real outcome (processes running on
the machines fleet's constraints allow).

A real 3-machine cluster (fleetd processes with the process runner, real etcd),
shared by the module; every test uses its own unit names.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlencode

import pytest

from fleetd.unit.unitfile import UnitFile, content_hash, parse_unit_file, serialize
from tests.support.etcd import wait_for
from tests.support.fleet import FleetHarness, sleeper_unit

SLEEP = 0.5          # fleetctl's defaultSleepTime
MAX_ATTEMPTS = 120   # fleet would poll for ever (block-attempts 0); a test stops after 60 s
V1 = "/fleet/v1/"


class StillWaiting(AssertionError):
    """fleet's fleetctl would still be polling (its default is to wait for ever)."""


class NilDereference(AssertionError):
    """fleet's fleetctl would crash here (a 404 answer used as a value)."""


@dataclass
class GoError(Exception):
    """googleapi.Error: any non-2xx answer."""

    code: int
    message: str


def go_json(value: dict) -> bytes:
    """encoding/json of a generated schema struct: declaration order, omitempty."""
    return json.dumps({k: v for k, v in value.items() if v not in ("", None, [], {})},
                      separators=(",", ":")).encode()


def go_options(unit: UnitFile) -> list[dict]:
    # schema.UnitOption: Name, Section, Value; an empty Value is left out.
    return [{k: v for k, v in (("name", o.name), ("section", o.section), ("value", o.value))
             if v} for o in unit.options]


def from_go_options(options: list[dict]) -> UnitFile:
    text = "".join(f"[{o.get('section', '')}]\n{o.get('name', '')}={o.get('value', '')}\n"
                   for o in options)
    return parse_unit_file(text)


class _Unix(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("domain-sock", timeout=10)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.path)
        self.sock = sock


@dataclass
class GoClient:
    """fleet v1.0.0's HTTPClient: the calls fleetctl makes, each logged as
    (method, path, query, body)."""

    socket_path: str
    log: list[tuple[str, str, dict, dict | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.conn = _Unix(self.socket_path)

    def close(self) -> None:
        self.conn.close()

    def _do(self, method: str, path: str, params: dict | None = None,
            body: dict | None = None) -> tuple[int, object]:
        query = {**(params or {}), "alt": "json"}
        target = V1 + path + "?" + urlencode(sorted(query.items()))  # url.Values.Encode
        headers = {"User-Agent": "google-api-go-client/0.5"}
        data = None
        if body is not None:
            data = go_json(body)
            headers["Content-Type"] = "application/json"
        # Go's googleapi.Expand percent-encodes the unit name ('@' is %40): so do we; the
        # log keeps the names readable.
        self.log.append((method, unquote(path), dict(params or {}), body))
        try:
            self.conn.request(method, target, body=data, headers=headers)
            response = self.conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            self.conn.close()  # an idle keep-alive connection closed: Go redials
            self.conn.request(method, target, body=data, headers=headers)
            response = self.conn.getresponse()
        raw = response.read()
        if response.status >= 300:
            try:
                message = json.loads(raw)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = raw.decode(errors="replace")
            raise GoError(response.status, message)
        return response.status, (json.loads(raw) if raw else None)

    def _pages(self, path: str, key: str) -> list[dict]:
        items, token = [], None
        while True:
            _, page = self._do("GET", path, {"nextPageToken": token} if token else None)
            items += page.get(key) or []
            token = page.get("nextPageToken")
            if not token:
                return items

    # client.API
    def machines(self) -> list[dict]:
        return self._pages("machines", "machines")

    def units(self) -> list[dict]:
        return self._pages("units", "units")

    def unit(self, name: str) -> dict | None:
        try:
            return self._do("GET", f"units/{quote(name, safe='')}")[1]
        except GoError as err:
            if err.code == 404:
                return None
            raise

    def unit_states(self) -> list[dict]:
        return self._pages("state", "states")

    def unit_state(self, name: str) -> dict | None:
        try:
            return self._do("GET", f"state/{quote(name, safe='')}")[1]
        except GoError as err:
            if err.code == 404:
                return None
            raise

    def create_unit(self, name: str, unit: UnitFile) -> None:
        self._do("PUT", f"units/{quote(name, safe='')}", body={"name": name,
                                                       "options": go_options(unit)})

    def set_unit_target_state(self, name: str, target: str) -> None:
        self._do("PUT", f"units/{quote(name, safe='')}",
                 body={"desiredState": target, "name": name})

    def destroy_unit(self, name: str) -> None:
        self._do("DELETE", f"units/{quote(name, safe='')}")


def is_global(unit: dict) -> bool:
    return any(o.get("section") == "X-Fleet" and o.get("name") == "Global"
               and o.get("value", "").lower() in ("true", "yes", "1")
               for o in unit.get("options") or [])


def mangle(arg: str) -> str:
    base = Path(arg).name
    return base if "." in base and base.rsplit(".", 1)[1] == "service" else base + ".service"


@dataclass
class FleetV1:
    """fleet v1.0.0's fleetctl commands over `GoClient` (block-attempts 0, as its default)."""

    api: GoClient
    workdir: Path
    out: list[str] = field(default_factory=list)
    err: list[str] = field(default_factory=list)
    machine_cache: dict[str, dict] | None = None

    # -- helpers of fleetctl.go ----------------------------------------------------------------
    def legend(self, machine_id: str) -> str:
        if self.machine_cache is None:
            self.machine_cache = {m["id"]: m for m in self.api.machines()}
        machine = self.machine_cache.get(machine_id)
        text = f"{machine_id[:8]}..."
        return f"{text}/{machine['primaryIP']}" if machine and machine.get("primaryIP") else text

    def assert_unit_state(self, name: str, state: str) -> bool:
        unit = self.api.unit(name)
        if unit is None:
            return False
        current = unit.get("desiredState") if is_global(unit) else unit.get("currentState")
        if current != state:
            return False
        message = f"Unit {name} {unit.get('currentState', '')}"
        if unit.get("machineID"):
            message += f" on {self.legend(unit['machineID'])}"
        self.out.append(message)
        return True

    def wait_for_unit_states(self, names: list[str], state: str, block: bool,
                             verb: str) -> None:
        if not block:
            self.out += [f"Triggered unit {n} {verb}" for n in names]
            return
        for name in names:
            for _ in range(MAX_ATTEMPTS):
                if self.assert_unit_state(name, state):
                    break
                time.sleep(SLEEP)
            else:
                raise StillWaiting(f"{name} never reported {state}")

    def wait_for_systemd_active(self, names: list[str], block: bool) -> None:
        if not block:
            return
        for name in names:
            for _ in range(MAX_ATTEMPTS):
                state = self.api.unit_state(name)
                if state is None:
                    raise NilDereference(f"GET state/{name} answered 404 after launched")
                if (state.get("systemdActiveState"), state.get("systemdLoadState")) == (
                        "active", "loaded"):
                    break
                time.sleep(SLEEP)
            else:
                raise StillWaiting(f"{name} never became active in systemd")

    def unit_file_for(self, arg: str) -> UnitFile:
        name = mangle(arg)
        path = self.workdir / (arg if arg.endswith(".service") else arg + ".service")
        if path.exists():
            return parse_unit_file(path.read_text())
        prefix, at, rest = name.partition("@")
        if not at or rest.startswith("."):
            raise AssertionError(f"unable to find Unit({name}) in Registry or on filesystem")
        template = f"{prefix}@.{rest.rsplit('.', 1)[1]}"
        found = self.api.unit(template)
        if found is not None:
            return from_go_options(found["options"])
        return parse_unit_file((self.workdir / template).read_text())

    def lazy_create_units(self, args: list[str], replace: bool, command: str) -> None:
        created = []
        for arg in args:
            name = mangle(arg)
            existing = self.api.unit(name)
            if existing is not None:
                local = self.workdir / name
                if not replace or not local.exists():
                    continue
                if content_hash(parse_unit_file(local.read_text())) == content_hash(
                        from_go_options(existing["options"])):
                    self.out.append(f"Found same Unit({name}) in Registry, nothing to do")
                    continue
                allowed = {"submit": ("inactive",), "load": ("inactive", "loaded"),
                           "start": ("inactive", "loaded", "launched")}[command]
                if existing["desiredState"] not in allowed:
                    continue
            self.api.create_unit(name, self.unit_file_for(arg))
            created.append(name)
        self.wait_for_unit_states(created, "inactive", True, "submit")

    def set_target_state(self, args: list[str], state: str) -> list[dict]:
        triggered = []
        for name in map(mangle, args):
            unit = self.api.unit(name)
            assert unit is not None, f"unable to find unit {name}"
            if unit["desiredState"] == state:
                continue
            self.api.set_unit_target_state(name, state)
            triggered.append(unit)
        return triggered

    def find_units(self, args: list[str]) -> list[dict]:
        by_name = {u["name"]: u for u in self.api.units()}
        return [by_name[n] for n in map(mangle, args) if n in by_name]

    # -- commands ------------------------------------------------------------------------------
    def submit(self, *args: str, replace: bool = False) -> None:
        self.lazy_create_units(list(args), replace, "submit")

    def load(self, *args: str, block: bool = True) -> None:
        self.lazy_create_units(list(args), False, "load")
        loading = []
        for unit in self.set_target_state(list(args), "loaded"):
            if is_global(unit):
                self.out.append(f"Triggered global unit {unit['name']} load")
            else:
                loading.append(unit["name"])
        self.wait_for_unit_states(loading, "loaded", block, "load")

    def start(self, *args: str, block: bool = True, replace: bool = False) -> None:
        self.lazy_create_units(list(args), replace, "start")
        starting = []
        for unit in self.set_target_state(list(args), "launched"):
            if is_global(unit):
                self.out.append(f"Triggered global unit {unit['name']} start")
            else:
                starting.append(unit["name"])
        self.wait_for_unit_states(starting, "launched", block, "start")
        self.wait_for_systemd_active(starting, block)

    def stop(self, *args: str, block: bool = True) -> int:
        units = self.find_units(list(args))
        if not units:
            self.err.append("Units not found in registry")
            return 0
        stopping = []
        for unit in units:
            if not is_global(unit):
                if unit.get("currentState") == "inactive":
                    self.err.append(f"Unable to stop unit {unit['name']} in state inactive")
                    return 1
                if unit.get("currentState") == "loaded":
                    continue
            self.api.set_unit_target_state(unit["name"], "loaded")
            if is_global(unit):
                self.out.append(f"Triggered global unit {unit['name']} stop")
            else:
                stopping.append(unit["name"])
        self.wait_for_unit_states(stopping, "loaded", block, "stop")
        self.err.append(f"Successfully stopped units [{' '.join(stopping)}].")
        return 0

    def unload(self, *args: str, block: bool = True) -> int:
        units = self.find_units(list(args))
        if not units:
            self.err.append("Units not found in registry")
            return 0
        waiting = []
        for unit in units:
            if not is_global(unit) and unit.get("currentState") == "inactive":
                continue
            self.api.set_unit_target_state(unit["name"], "inactive")
            if is_global(unit):
                self.out.append(f"Triggered global unit {unit['name']} unload")
            else:
                waiting.append(unit["name"])
        self.wait_for_unit_states(waiting, "inactive", block, "unload")
        self.err.append(f"Successfully unloaded units [{' '.join(waiting)}].")
        return 0

    def destroy(self, *args: str) -> int:
        units = self.find_units(list(args))
        if not units:
            self.err.append("Units not found in registry")
            return 0
        for unit in units:
            self.api.destroy_unit(unit["name"])
            for _ in range(MAX_ATTEMPTS):
                if self.api.unit(unit["name"]) is None:
                    break
                time.sleep(SLEEP)
            self.out.append(f"Destroyed {unit['name']}")
        return 0

    def cat(self, name: str) -> str:
        unit = self.api.unit(mangle(name))
        assert unit is not None
        return serialize(from_go_options(unit["options"]))

    def list_unit_files(self) -> list[dict]:
        units = self.api.units()
        if any(u.get("machineID") for u in units):
            self.api.machines()
        return units

    def list_units(self) -> list[dict]:
        states = self.api.unit_states()
        if states:
            self.api.machines()
        return states


# -- the cluster ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster(etcd_server, tmp_path_factory):
    harness = FleetHarness(etcd_server.url, f"/v1c-{uuid.uuid4().hex[:8]}/",
                           tmp_path_factory.mktemp("v1c"))
    harness.start("n1", metadata="role=web")
    harness.start("n2", metadata="role=web")
    harness.start("n3", metadata="role=db")
    yield harness
    harness.close()


@pytest.fixture
def fleet(cluster, tmp_path):
    client = GoClient(str(cluster.fleetds["n1"].state_dir / "fleet.sock"))
    yield FleetV1(client, tmp_path)
    client.close()


def calls(fleet: FleetV1) -> list[tuple[str, str]]:
    """The request log without repeated polls of the same call."""
    seen: list[tuple[str, str]] = []
    for method, path, _, _ in fleet.api.log:
        if not seen or seen[-1] != (method, path):
            seen.append((method, path))
    return seen


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


def machine_of(cluster: FleetHarness, name: str) -> str:
    ids = {f.machine_id: n for n, f in cluster.fleetds.items()}
    (machine,) = cluster.wait_running([name])[name]
    return ids[machine]


# -- tests ---------------------------------------------------------------------------------------
def test_submit_sends_no_desired_state_and_waits_for_inactive(cluster, fleet):
    name = unique("plain") + ".service"
    (fleet.workdir / name).write_text(sleeper_unit(cluster.run_dir))
    fleet.submit(name)
    put = [(p, b) for m, p, _, b in fleet.api.log if m == "PUT"]
    assert put == [(f"units/{name}", {"name": name, "options": go_options(
        parse_unit_file(sleeper_unit(cluster.run_dir)))})]
    assert "desiredState" not in put[0][1]
    assert calls(fleet) == [("GET", f"units/{name}"), ("PUT", f"units/{name}"),
                            ("GET", f"units/{name}")]
    assert fleet.out == [f"Unit {name} inactive"]
    assert all(q == {} for _, _, q, _ in fleet.api.log), "only alt=json, which Go always adds"
    assert fleet.cat(name) == serialize(parse_unit_file(sleeper_unit(cluster.run_dir)))
    files = {u["name"]: u for u in fleet.list_unit_files()}
    assert (files[name]["desiredState"], files[name]["currentState"]) == ("inactive", "inactive")
    assert fleet.destroy(name) == 0 and fleet.out[-1] == f"Destroyed {name}"


def test_load_start_stop_unload_destroy_a_plain_unit(cluster, fleet):
    name = unique("life") + ".service"
    (fleet.workdir / name).write_text(sleeper_unit(cluster.run_dir))
    fleet.load(name)
    assert fleet.out[-1].startswith(f"Unit {name} loaded on ")
    assert ("PUT", f"units/{name}", {}, {"desiredState": "loaded", "name": name}) in \
        fleet.api.log
    fleet.out.clear()
    fleet.api.log.clear()

    fleet.start(name)  # blocking: launched, then systemd active through GET state/<name>
    assert len(fleet.out) == 1 and fleet.out[0].startswith(f"Unit {name} launched on ")
    assert fleet.out[0].endswith("/127.0.0.1")
    assert calls(fleet) == [("GET", f"units/{name}"), ("PUT", f"units/{name}"),
                            ("GET", f"units/{name}"), ("GET", f"state/{name}")]
    assert cluster.wait_running([name])
    states = [s for s in fleet.list_units() if s["name"] == name]
    assert [(s["systemdActiveState"], s["systemdSubState"]) for s in states] == [
        ("active", "running")]

    fleet.out.clear()
    fleet.api.log.clear()
    fleet.start(name)  # already launched: nothing to do, nothing printed
    assert fleet.out == [] and [m for m, *_ in fleet.api.log] == ["GET", "GET"]

    assert fleet.stop(name) == 0
    assert fleet.out[-1].startswith(f"Unit {name} loaded on ")
    assert fleet.err[-1] == f"Successfully stopped units [{name}]."
    wait_for(lambda: not cluster.running().get(name), 15, message="stopped")
    assert fleet.unload(name) == 0
    assert fleet.out[-1] == f"Unit {name} inactive"
    assert fleet.err[-1] == f"Successfully unloaded units [{name}]."
    assert fleet.destroy(name) == 0 and fleet.api.unit(name) is None


def test_no_block_start_and_missing_units(cluster, fleet):
    name = unique("nb") + ".service"
    (fleet.workdir / name).write_text(sleeper_unit(cluster.run_dir))
    fleet.start(name, block=False)
    assert fleet.out[-1] == f"Triggered unit {name} start"
    assert not any(p.startswith("state/") for _, p, _, _ in fleet.api.log)
    cluster.wait_running([name])
    ghost = unique("ghost") + ".service"
    for command in (fleet.stop, fleet.unload, fleet.destroy):
        assert command(ghost) == 0
        assert fleet.err[-1] == "Units not found in registry"
    fleet.destroy(name)
    wait_for(lambda: not cluster.running().get(name), 15, message="destroyed unit stopped")


def test_replace_submits_new_content_and_start_runs_it(cluster, fleet):
    name = unique("rep") + ".service"
    path = fleet.workdir / name
    path.write_text(sleeper_unit(cluster.run_dir, extra="Description=first"))
    fleet.start(name)
    first = cluster.wait_running([name])[name]
    old_pid = cluster.pids()[f"{name}@{first[0]}"]

    path.write_text(sleeper_unit(cluster.run_dir, extra="Documentation=second"))
    fleet.out.clear()
    fleet.api.log.clear()
    fleet.start(name, replace=True)
    replace = [(p, b) for m, p, _, b in fleet.api.log if m == "PUT"]
    assert replace[0] == (f"units/{name}", {"name": name, "options": go_options(
        parse_unit_file(path.read_text()))})
    assert replace[1] == (f"units/{name}", {"desiredState": "launched", "name": name})
    assert fleet.out[0] == f"Unit {name} inactive", "the replaced unit is submitted anew"
    assert fleet.out[1].startswith(f"Unit {name} launched on ")
    assert "Documentation=second" in fleet.cat(name)

    def new_process() -> bool:
        pids = {k: v for k, v in cluster.pids().items() if k.startswith(f"{name}@")}
        return len(pids) == 1 and old_pid not in pids.values()
    wait_for(new_process, 20, message="the new content runs, the old process is gone")
    fleet.destroy(name)


def test_templates_instances_and_conflicts(cluster, fleet):
    base = unique("web")
    template = f"{base}@.service"
    (fleet.workdir / template).write_text(sleeper_unit(
        cluster.run_dir, xfleet=f"Conflicts={base}@*.service\nMachineMetadata=role=web"))
    fleet.submit(template)
    instances = [f"{base}@1.service", f"{base}@2.service"]
    fleet.api.log.clear()
    fleet.start(f"{base}@1", f"{base}@2")
    # each instance is made from the template in the registry (no local instance file)
    assert ("GET", f"units/{template}", {}, None) in fleet.api.log
    assert [b["options"] for m, _, _, b in fleet.api.log if m == "PUT" and "options" in b] == \
        [go_options(parse_unit_file((fleet.workdir / template).read_text()))] * 2
    where = {name: machine_of(cluster, name) for name in instances}
    assert sorted(where.values()) == ["n1", "n2"], "Conflicts: one per role=web machine"

    third = f"{base}@3.service"
    fleet.start(third, block=False)
    time.sleep(3 * SLEEP)
    unit = fleet.api.unit(third)
    assert (unit["currentState"], unit.get("machineID", "")) == ("inactive", ""), \
        "no third role=web machine: it stays unscheduled"

    with pytest.raises(GoError) as refused:  # fleet's start of the template itself
        fleet.api.set_unit_target_state(template, "launched")
    assert refused.value.code == 400 and "cannot activate template" in refused.value.message
    assert fleet.api.unit(template)["desiredState"] == "inactive"
    assert not any(k.startswith(f"{template}@") for k in cluster.pids())
    for name in [*instances, third, template]:
        fleet.destroy(name)


def test_machine_metadata_and_global_units(cluster, fleet):
    db = unique("db") + ".service"
    (fleet.workdir / db).write_text(sleeper_unit(cluster.run_dir,
                                                 xfleet="MachineMetadata=role=db"))
    fleet.start(db)
    assert machine_of(cluster, db) == "n3"
    assert fleet.out[-1].startswith(f"Unit {db} launched on ")

    every = unique("every") + ".service"
    (fleet.workdir / every).write_text(sleeper_unit(cluster.run_dir, xfleet="Global=true"))
    fleet.api.log.clear()
    fleet.start(every)
    assert fleet.out[-1] == f"Triggered global unit {every} start"
    assert not any(p.startswith("state/") for _, p, _, _ in fleet.api.log), \
        "fleet does not wait for global units"
    wait_for(lambda: len(cluster.running().get(every, [])) == 3, 20,
             message="the global unit runs on every machine")
    assert fleet.stop(every) == 0
    assert fleet.out[-1] == f"Triggered global unit {every} stop"
    wait_for(lambda: not cluster.running().get(every), 20, message="global unit stopped")
    assert fleet.unload(every) == 0 and fleet.out[-1] == f"Triggered global unit {every} unload"
    for name in (db, every):
        fleet.destroy(name)


def test_a_unit_that_fails_is_launched_and_its_state_says_failed(cluster, fleet):
    """fleet's blocking start reaches `launched` and then reads state/<name>: it must get
    systemd's failed/failed there (a 404 made fleet's fleetctl dereference nil)."""
    name = unique("fails") + ".service"
    (fleet.workdir / name).write_text("[Service]\nExecStart=/bin/sh -c 'echo no; exit 7'\n")
    fleet.start(name, block=False)
    fleet.wait_for_unit_states([name], "launched", True, "start")
    assert fleet.out[-1].startswith(f"Unit {name} launched on ")

    def failed():
        state = fleet.api.unit_state(name)
        if state is None:
            raise NilDereference(f"GET state/{name} answered 404 after launched")
        return state if state["systemdActiveState"] == "failed" else None
    state = wait_for(failed, 20, message="systemd reports the failure")
    assert (state["systemdLoadState"], state["systemdSubState"]) == ("loaded", "failed")
    assert fleet.api.unit(name)["currentState"] == "launched"
    fleet.destroy(name)


def test_listings_page_like_fleet(cluster, fleet):
    machines = fleet.api.machines()
    assert sorted(m["metadata"]["role"] for m in machines) == ["db", "web", "web"]
    assert all(set(m) >= {"id", "primaryIP", "metadata"} for m in machines)
    assert [p for _, p, _, _ in fleet.api.log] == ["machines"]
    assert isinstance(fleet.list_units(), list)
    assert isinstance(fleet.list_unit_files(), list)
