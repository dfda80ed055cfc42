"""The edges where provision meets a disk that says no, and the logs it keeps bounded.

Real filesystems: a tmpfs of a few pages, filled, and a read-only bind mount (root
only; skipped with the reason otherwise). Pure parts (etcd's cause lines, the join
flags of a re-added member, log limits) are tables.
"""

from __future__ import annotations

import errno
import json

import pytest

from fleetd.runner.process.journal import tail
from fleetd.runner.process.procs import LogLimits, UnitLog
from provision.errors import UserError
from provision.files import disk_error, write_atomic
from provision.providers.local.health import causes, excerpt
from provision.providers.local.membership import join_argv
from provision.providers.local.nodes import log_limits
from tests.conftest import CLUSTERS
from tests.support.disks import SmallDisk, leftovers, read_only

# -- whole-file writes on a full or read-only disk --------------------------------------------


def test_a_write_on_a_full_disk_names_the_file_keeps_the_old_one_and_leaves_no_staged_file():
    with SmallDisk(64 * 1024) as disk:
        target = disk.path / "status.json"
        write_atomic(target, "old\n")
        disk.fill()
        with pytest.raises(OSError) as caught:
            write_atomic(target, "new\n" * 4096)
        assert caught.value.errno == errno.ENOSPC
        assert caught.value.filename == str(target)
        assert target.read_text() == "old\n"
        assert leftovers(disk.path) == []
        assert str(disk_error(caught.value)) == (
            f"{target}: cannot write: no space left on device; free some space there and run "
            "the command again")


def test_a_write_on_a_read_only_disk_is_one_line_with_the_cause(tmp_path):
    target = tmp_path / "last-cluster"
    target.write_text("before\n")
    with read_only(tmp_path):
        with pytest.raises(OSError) as caught:
            write_atomic(target, "after\n")
    assert caught.value.errno == errno.EROFS
    line = str(disk_error(caught.value))
    assert line.startswith(f"{target}: cannot write: read-only file system; ")
    assert "\n" not in line
    assert target.read_text() == "before\n"
    assert leftovers(tmp_path) == []


def test_render_into_a_full_disk_or_a_read_only_one_is_one_line_exit_2(run_cli, tmp_path):
    with SmallDisk(256 * 1024) as disk:
        disk.fill()
        out = disk.path / "out"
        result = run_cli("render", str(CLUSTERS / "large.yaml"), "-o", str(out))
        assert result.code == 2
        assert result.err.splitlines() == [
            f"{out}: cannot write: no space left on device; free some space there and run the "
            "command again"]
        assert sorted(p.name for p in disk.path.iterdir()) == [".filler"]
    ro = tmp_path / "ro"
    ro.mkdir()
    with read_only(ro):
        result = run_cli("render", str(CLUSTERS / "large.yaml"), "-o", str(ro / "out"))
    assert result.code == 2
    assert len(result.err.splitlines()) == 1
    assert "read-only file system" in result.err and str(ro / "out") in result.err
    assert list(ro.iterdir()) == []


# -- etcd's own cause lines before its stack tail ----------------------------------------------

ZAP_PANIC = ('{"level":"panic","ts":"2026-12-01T12:03:58.561Z","caller":"etcdserver/raft.go:433",'
             '"msg":"failed to create WAL","error":"no space left on device","stacktrace":'
             '"go.etcd.io/etcd/server/v3/etcdserver.startNode\\n\\t/raft.go:433"}')
ZAP_WARN = ('{"level":"warn","ts":"2026-12-01T12:03:58.561Z","msg":"failed to preallocate an '
            'initial WAL file","error":"no space left on device"}')
ZAP_DB = ('{"level":"panic","ts":"2026-12-01T12:07:54.296Z","msg":"failed to open database",'
          '"path":"/s/nodes/core-01/etcd/member/snap/db","error":"write /s/db: no space left on '
          'device"}')
CAPNS = "2026-12-01 12:03:58.640520 C | etcdserver: create wal error: no space left on device"
RAFT_LOST = ("2026-12-01 12:03:58.640520 C | raft: tocommit(9) is out of range [lastIndex(0)]. "
             "Was the raft log corrupted, truncated, or lost?")


def unit_line(text: str, pid: int = 4242) -> str:
    return f"2026-12-01T12:03:58.561000+00:00 core-01 etcd[{pid}]: {text}"


@pytest.mark.parametrize(("lines", "expected"), [
    pytest.param([ZAP_WARN, ZAP_PANIC, "panic: failed to create WAL", "", "goroutine 1 [run]:"],
                 ["panic: failed to create WAL: no space left on device"],
                 id="etcd 3.5 zap panic; Go's repeat of it folded in"),
    pytest.param([ZAP_DB, "panic: failed to open database"],
                 ["panic: failed to open database (path=/s/nodes/core-01/etcd/member/snap/db): "
                  "write /s/db: no space left on device"], id="zap line with a path"),
    pytest.param([CAPNS, "panic: create wal error: no space left on device"],
                 ["C | etcdserver: create wal error: no space left on device",
                  "panic: create wal error: no space left on device"], id="etcd 3.4 capnslog"),
    pytest.param([ZAP_PANIC.replace("12:03:58", f"12:0{i}:00") for i in range(5)],
                 ["panic: failed to create WAL: no space left on device"],
                 id="the same error five times, once"),
    pytest.param(['{"level":"info","msg":"ready to serve client requests"}', "plain text"], [],
                 id="nothing wrong"),
    pytest.param([RAFT_LOST], [RAFT_LOST.split(" ", 2)[2]], id="a member that lost its log"),
])
def test_cause_lines_of_a_log(lines, expected):
    assert causes([unit_line(line) for line in lines]) == expected


def test_many_errors_keep_the_fatal_one_and_the_latest():
    lines = [unit_line(json.dumps({"level": "error", "msg": f"peer {i} unreachable"}))
             for i in range(20)]
    lines.insert(3, unit_line(ZAP_PANIC))
    found = causes(lines, limit=3)
    assert found == ["panic: failed to create WAL: no space left on device",
                     "error: peer 18 unreachable", "error: peer 19 unreachable"]


def test_a_failure_excerpt_shows_the_cause_before_the_stack_tail(tmp_path):
    log = tmp_path / "etcd2.service.log"
    stack = [f"\tgo.etcd.io/etcd/server/v3/frame{i}.go:{i}" for i in range(40)]
    log.write_text("\n".join(unit_line(x) for x in [ZAP_PANIC, "panic: failed to create WAL",
                                                      *stack]) + "\n")
    text = excerpt(log)
    head, _, rest = text.partition(f"--- last lines of {log} ---")
    assert "no space left on device" in head
    assert "no space left on device" not in rest  # the tail alone would not have shown it
    assert rest.strip().splitlines()[-1].endswith("frame39.go:39")


# -- a member re-added to a running cluster ----------------------------------------------------

MEMBERS = "core-01=http://10.0.0.1:2380,core-02=http://10.0.0.2:2380"


@pytest.mark.parametrize("bootstrap", [
    pytest.param(("--initial-cluster=core-01=http://10.0.0.1:2380,core-02=http://10.0.0.2:2380",
                  "--initial-cluster-state=new", "--initial-cluster-token=t"), id="static"),
    pytest.param(("--discovery=http://10.0.0.9:2379/v2/keys/discovery/abc",), id="token/custom"),
    pytest.param(("--discovery-srv=example.com", "--initial-cluster-token=t"), id="dns-srv"),
])
def test_a_re_added_member_joins_with_the_members_as_they_are(bootstrap):
    argv = ("etcd", "--name=core-02", "--data-dir=/d", *bootstrap,
            "--initial-advertise-peer-urls=http://10.0.0.2:2380")
    joined = join_argv(argv, MEMBERS)
    assert joined[-2:] == (f"--initial-cluster={MEMBERS}", "--initial-cluster-state=existing")
    assert not [a for a in joined[:-2] if a.startswith(("--initial-cluster=", "--discovery",
                                                         "--initial-cluster-state="))]
    assert "--name=core-02" in joined and "--data-dir=/d" in joined


# -- node logs are bounded ---------------------------------------------------------------------

def test_a_unit_log_rotates_at_its_size_and_keeps_a_few_old_files(tmp_path):
    log = UnitLog(tmp_path / "chatty.service.log", "core-01", LogLimits(max_bytes=4096, keep=2))
    for batch in range(0, 2000, 100):  # the runner writes what one read brought: many lines
        log.write_lines("chatty[1]", [f"line {i:05d} " + "x" * 40
                                      for i in range(batch, batch + 100)])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["chatty.service.log", "chatty.service.log.1", "chatty.service.log.2"]
    assert all((tmp_path / n).stat().st_size <= 4096 for n in names)
    current, _ = tail(tmp_path / "chatty.service.log", 1)
    assert current[0].endswith("line 01999 " + "x" * 40)  # readers see the newest lines
    older = (tmp_path / "chatty.service.log.1").read_text().splitlines()
    newer = (tmp_path / "chatty.service.log").read_text().splitlines()
    assert older[-1] < newer[0]  # .1 holds what came just before


def test_a_unit_log_on_a_full_disk_drops_lines_and_carries_on():
    with SmallDisk(64 * 1024) as disk:
        log = UnitLog(disk.path / "u.log", "core-01", LogLimits(max_bytes=16384, keep=1))
        disk.fill()
        for i in range(100):
            log.write_lines("u[1]", [f"line {i}"])  # no exception
        disk.free()
        log.write_lines("u[1]", ["after"])
        assert (disk.path / "u.log").read_text().splitlines()[-1].endswith("u[1]: after")


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, {"max_bytes": 10 * 1024 * 1024, "keep": 3}),
    ({"PROVISION_LOG_MAX": "64k", "PROVISION_LOG_KEEP": "2"}, {"max_bytes": 65536, "keep": 2}),
    ({"PROVISION_LOG_MAX": "1G"}, {"max_bytes": 1 << 30, "keep": 3}),
    ({"PROVISION_LOG_MAX": "20MB", "PROVISION_LOG_KEEP": "0"},
     {"max_bytes": 20 << 20, "keep": 0}),
])
def test_node_log_limits_from_the_environment(environ, expected):
    assert log_limits(environ) == expected


@pytest.mark.parametrize("environ", [
    {"PROVISION_LOG_MAX": "lots"}, {"PROVISION_LOG_MAX": "100"}, {"PROVISION_LOG_MAX": "-5M"},
    {"PROVISION_LOG_KEEP": "-1"}, {"PROVISION_LOG_KEEP": "many"}, {"PROVISION_LOG_MAX": "5T"},
])
def test_bad_node_log_limits_are_user_errors(environ):
    with pytest.raises(UserError) as caught:
        log_limits(environ)
    assert "PROVISION_LOG_MAX" in str(caught.value)
