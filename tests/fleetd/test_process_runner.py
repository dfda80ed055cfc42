"""The process runner with real processes.

Every wait polls a condition against a deadline; every test proves afterwards
that nothing it started survives (each unit process carries a per-test marker
in its environment, and /proc is searched for it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetd.runner.base import RunnerError, UnitStatus
from fleetd.runner.process import ProcessRunner
from fleetd.runner.process.settings import ConfigError, parse_service_config, parse_timespan
from fleetd.runner.process.specifiers import (
    ExpansionError,
    SpecifierContext,
    expand_specifiers,
    expand_variables,
    parse_environment_file,
    specifier_table,
)
from fleetd.unit.names import parse_unit_name
from fleetd.unit.unitfile import UnitFile, parse_unit_file

REPO = Path(__file__).resolve().parents[2]
MARK = "FLEETD_TEST_MARK"
MACHINE_ID = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
HOSTNAME = "node1"


# -- helpers -------------------------------------------------------------------------------


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02):
    """Poll `predicate` until it is truthy or `timeout` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def marked_processes(marker: str) -> dict[int, str]:
    """Live (non-zombie) processes whose environment carries this test's marker: pid → comm."""
    needle = f"{MARK}={marker}".encode()
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = handle.read()
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        if needle not in environ.split(b"\0"):
            continue
        if stat[stat.rfind(b")") + 2:].split()[0] == b"Z":
            continue
        found[int(entry)] = stat[stat.find(b"(") + 1:stat.rfind(b")")].decode()
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:].split()[0] != b"Z"


def unit(text: str, **paths: Path) -> UnitFile:
    text = textwrap.dedent(text)
    for key, value in paths.items():
        text = text.replace(f"@{key}@", str(value))
    return parse_unit_file(text)


def state(runner: ProcessRunner, name: str) -> UnitStatus:
    return runner.units().get(name, UnitStatus())


def journal_text(runner: ProcessRunner, name: str, lines: int = 50) -> str:
    return "\n".join(runner.journal(name, lines))


def wait_state(runner: ProcessRunner, name: str, active: str, sub: str,
               timeout: float = 10.0) -> None:
    reached = wait_for(lambda: (state(runner, name).active, state(runner, name).sub)
                       == (active, sub), timeout)
    assert reached, (f"{name} is {state(runner, name)}, expected {active}/{sub}; journal:\n"
                     f"{journal_text(runner, name)}")


def wait_settled(runner: ProcessRunner, recorder: Recorder, name: str, active: str,
                 sub: str, timeout: float = 10.0) -> None:
    """Like wait_state, for states a unit also has before it starts (inactive/dead)."""
    reached = wait_for(lambda: len(recorder.of(name)) > 1
                       and recorder.of(name)[-1] == (active, sub), timeout)
    assert reached, (f"{name} went {recorder.of(name)}, expected to end {active}/{sub}; "
                     f"journal:\n{journal_text(runner, name)}")


def wait_journal(runner: ProcessRunner, name: str, text: str, timeout: float = 10.0) -> None:
    assert wait_for(lambda: text in journal_text(runner, name), timeout), \
        f"{text!r} not in the journal of {name}:\n{journal_text(runner, name)}"


def file_lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


class Recorder:
    """A subscriber that keeps every (name, active, sub) it is told, in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: list[tuple[str, str, str, str]] = []
        self.threads: set[str] = set()

    def __call__(self, name: str, status: UnitStatus) -> None:
        with self._lock:
            self.events.append((name, status.load, status.active, status.sub))
            self.threads.add(threading.current_thread().name)

    def of(self, name: str) -> list[tuple[str, str]]:
        with self._lock:
            return [(active, sub) for n, _, active, sub in self.events if n == name]

    def index(self, name: str, active: str, sub: str) -> int:
        with self._lock:
            return next(i for i, event in enumerate(self.events)
                        if event[0] == name and event[2:] == (active, sub))


@pytest.fixture
def make_runner(tmp_path):
    """Runners whose unit processes carry a marker; afterwards: shut down, nothing survives."""
    marker = uuid.uuid4().hex
    runners: list[ProcessRunner] = []
    threads_before = set(threading.enumerate())

    def make(root_dir: Path | None = None) -> ProcessRunner:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), MARK: marker}
        runner = ProcessRunner(tmp_path / f"state{len(runners)}", MACHINE_ID, HOSTNAME,
                               env=env, root_dir=root_dir)
        runners.append(runner)
        return runner

    yield make
    for runner in runners:
        runner.shutdown(timeout=20)
    survivors: dict[int, str] = {}
    if not wait_for(lambda: not marked_processes(marker), 5):
        survivors = marked_processes(marker)
        for pid in survivors:
            os.kill(pid, signal.SIGKILL)
    assert not survivors, f"processes survived the test: {survivors}"
    threads = [t.name for t in set(threading.enumerate()) - threads_before]
    assert not threads, f"runner threads still alive: {threads}"


@pytest.fixture
def runner(make_runner) -> ProcessRunner:
    return make_runner()


@pytest.fixture
def recorder(runner) -> Recorder:
    rec = Recorder()
    runner.subscribe(rec)
    return rec


# -- simple services -----------------------------------------------------------------------


ESCAPER = "import os, time; os.setsid(); time.sleep(300)"  # leaves the unit's process group


def comms(pids) -> list[str]:
    """Command names of these processes; the ESCAPER shows as `escaper` once in its session."""
    found = []
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_bytes()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        session = int(stat[stat.rfind(b")") + 2:].split()[3])
        if ESCAPER.encode() in cmdline.split(b"\0") and session == pid:
            found.append("escaper")
        else:
            found.append(stat[stat.find(b"(") + 1:stat.rfind(b")")].decode())
    return found


def escaped_and_two_sleeps(pids) -> bool:
    names = comms(pids)
    return names.count("sleep") == 2 and "escaper" in names


def test_simple_service_runs_until_stopped_and_stop_kills_everything_it_spawned(runner):
    runner.load("web.service", unit(f"""
        [Unit]
        Description=Web server
        [Service]
        ExecStart=/bin/sh -c '{sys.executable} -c "{ESCAPER}" & sleep 300 & sleep 300'
    """))
    assert state(runner, "web.service") == UnitStatus("loaded", "inactive", "dead")
    runner.start("web.service")
    wait_state(runner, "web.service", "active", "running")
    assert wait_for(lambda: escaped_and_two_sleeps(runner.processes("web.service"))), \
        comms(runner.processes("web.service"))
    pids = runner.processes("web.service")
    assert runner.main_pid("web.service") in pids

    runner.stop("web.service")
    wait_state(runner, "web.service", "inactive", "dead")
    assert wait_for(lambda: not any(alive(pid) for pid in pids), 5), \
        [pid for pid in pids if alive(pid)]
    assert "Stopped Web server." in journal_text(runner, "web.service")
    assert (runner.state_dir / "units" / "web.service").is_file()


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    return int(stat[stat.rfind(b")") + 2:].split()[1])


def test_units_run_as_children_of_one_supervisor_not_one_interpreter_each(runner):
    names = [f"many@{i}.service" for i in range(12)]
    for name in names:
        runner.load(name, unit("[Service]\nExecStart=/bin/sleep 300\n"))
        runner.start(name)
    for name in names:
        wait_state(runner, name, "active", "running")
    supervisor = runner.host.supervisor_pid()
    assert supervisor is not None and alive(supervisor)
    mains = [runner.main_pid(name) for name in names]
    assert all(parent_of(pid) == supervisor for pid in mains)
    assert all(os.getpgid(pid) == pid for pid in mains)  # each its own process group
    below_us = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
                if alive(pid) and parent_of(pid) == os.getpid()]
    assert below_us.count(supervisor) == 1
    assert comms(below_us).count("python3") + comms(below_us).count("python") <= 1, \
        comms(below_us)


def test_a_stop_among_many_units_stops_only_its_own_group(runner):
    names = [f"pair@{i}.service" for i in range(6)]
    for name in names:
        runner.load(name, unit("[Service]\nExecStart=/bin/sh -c 'sleep 300 & sleep 300'\n"))
        runner.start(name)
    for name in names:
        wait_state(runner, name, "active", "running")
    assert wait_for(lambda: all(len(runner.processes(n)) >= 2 for n in names))
    victim = runner.processes(names[0])
    runner.stop(names[0])
    wait_state(runner, names[0], "inactive", "dead")
    assert wait_for(lambda: not any(alive(pid) for pid in victim), 5)
    assert all(state(runner, n).sub == "running" for n in names[1:])
    assert all(len(runner.processes(n)) >= 2 for n in names[1:])


def test_slow_start_pre_is_reported_as_activating_start_pre(runner, tmp_path):
    runner.load("slow.service", unit("""
        [Service]
        Environment=OUT=@out@
        ExecStartPre=/bin/sh -c 'while [ ! -e "$OUT/go" ]; do sleep 0.02; done'
        ExecStart=/bin/sleep 300
    """, out=tmp_path))
    runner.start("slow.service")
    wait_state(runner, "slow.service", "activating", "start-pre")
    (tmp_path / "go").touch()
    wait_state(runner, "slow.service", "active", "running")


@pytest.mark.parametrize("pre, expected", [
    pytest.param("-/bin/false", ("active", "running"), id="dash prefix ignores a failing pre"),
    pytest.param("-/nonexistent/tool", ("active", "running"),
                 id="dash prefix ignores a pre that cannot run"),
    pytest.param("/bin/false", ("failed", "failed"), id="failing pre without prefix fails"),
    pytest.param("+/bin/true", ("active", "running"), id="plus prefix accepted"),
    pytest.param("!/bin/true", ("active", "running"), id="bang prefix accepted"),
    pytest.param("@/bin/sh true-ish -c 'exit 0'", ("active", "running"),
                 id="at prefix takes the next word as argv0"),
])
def test_start_pre_prefixes(runner, pre, expected):
    runner.load("pre.service", unit(f"""
        [Service]
        ExecStartPre={pre}
        ExecStart=/bin/sleep 300
    """))
    runner.start("pre.service")
    wait_state(runner, "pre.service", *expected)
    if expected[0] == "failed":
        assert "Control process exited, code=exited, status=1/FAILURE" in \
            journal_text(runner, "pre.service")
        assert runner.main_pid("pre.service") is None


@pytest.mark.parametrize("command, final, journal, result", [
    pytest.param("/bin/sh -c 'exit 3'", ("failed", "failed"),
                 "Main process exited, code=exited, status=3", "exit-code",
                 id="non-zero exit fails"),
    pytest.param("/nonexistent/daemon", ("failed", "failed"),
                 "Failed to execute /nonexistent/daemon: No such file or directory",
                 "exit-code", id="missing binary fails with the reason"),
    pytest.param("/bin/sh -c 'kill -KILL $$$$'", ("failed", "failed"),
                 "Main process exited, code=killed, status=9/KILL", "signal",
                 id="killed by a signal fails"),
    pytest.param("/bin/true", ("inactive", "dead"),
                 "Main process exited, code=exited, status=0/SUCCESS", None,
                 id="exit 0 ends inactive"),
])
def test_main_process_end(runner, recorder, command, final, journal, result):
    runner.load("main.service", unit(f"""
        [Service]
        ExecStart={command}
    """))
    runner.start("main.service")
    wait_settled(runner, recorder, "main.service", *final)
    wait_journal(runner, "main.service", journal)
    if result:
        assert f"Active: failed (Result: {result})" in runner.status_text("main.service")


def test_timeout_start_fails_a_hanging_start_pre(runner):
    runner.load("hang.service", unit("""
        [Service]
        ExecStartPre=/bin/sleep 300
        ExecStart=/bin/sleep 300
        TimeoutStartSec=300ms
        TimeoutStopSec=1
    """))
    runner.start("hang.service")
    wait_state(runner, "hang.service", "failed", "failed")
    assert "start-pre operation timed out" in journal_text(runner, "hang.service")
    assert "Result: timeout" in runner.status_text("hang.service")


def test_forking_service_runs_while_what_it_left_behind_lives(runner, tmp_path):
    runner.load("fork.service", unit("""
        [Service]
        Type=forking
        Environment=OUT=@out@
        ExecStart=/bin/sh -c 'sleep 300 & echo $! > "$OUT/daemon.pid"'
    """, out=tmp_path))
    runner.start("fork.service")
    wait_state(runner, "fork.service", "active", "running")
    daemon = int((tmp_path / "daemon.pid").read_text())
    assert alive(daemon)
    os.kill(daemon, signal.SIGKILL)
    wait_state(runner, "fork.service", "inactive", "dead")


def test_type_notify_is_approximated_as_simple(runner):
    runner.load("notify.service", unit("""
        [Service]
        Type=notify
        ExecStart=/bin/sleep 300
    """))
    runner.start("notify.service")
    wait_state(runner, "notify.service", "active", "running")
    assert "Type=notify is treated as Type=simple" in journal_text(runner, "notify.service")


# -- restarts ------------------------------------------------------------------------------


def test_restart_always_restarts_after_restart_sec(runner, recorder, tmp_path):
    runner.load("again.service", unit("""
        [Service]
        Environment=OUT=@out@
        ExecStart=/bin/sh -c 'echo start >> "$OUT/count"'
        Restart=always
        RestartSec=0.2
    """, out=tmp_path))
    started = time.monotonic()
    runner.start("again.service")
    assert wait_for(lambda: len(file_lines(tmp_path / "count")) >= 3), \
        journal_text(runner, "again.service")
    assert time.monotonic() - started >= 0.4  # two RestartSec= pauses at least
    assert ("activating", "auto-restart") in recorder.of("again.service")
    runner.stop("again.service")
    wait_state(runner, "again.service", "inactive", "dead")


@pytest.mark.parametrize("policy, code, restarts, final", [
    pytest.param("on-failure", 0, False, ("inactive", "dead"), id="on-failure, exit 0: no"),
    pytest.param("on-failure", 1, True, None, id="on-failure, exit 1: restarts"),
    pytest.param("on-success", 0, True, None, id="on-success, exit 0: restarts"),
    pytest.param("on-success", 1, False, ("failed", "failed"), id="on-success, exit 1: no"),
    pytest.param("no", 1, False, ("failed", "failed"), id="no, exit 1: no"),
])
def test_restart_policies(runner, recorder, tmp_path, policy, code, restarts, final):
    runner.load("policy.service", unit(f"""
        [Service]
        Environment=OUT=@out@
        ExecStart=/bin/sh -c 'echo start >> "$OUT/count"; exit {code}'
        Restart={policy}
        RestartSec=0.1
    """, out=tmp_path))
    runner.start("policy.service")
    if restarts:
        assert wait_for(lambda: len(file_lines(tmp_path / "count")) >= 2)
        runner.stop("policy.service")
        assert wait_for(lambda: state(runner, "policy.service").active in ("inactive", "failed"))
    else:
        wait_settled(runner, recorder, "policy.service", *final)
        # The restart decision is taken before the final state: none was scheduled.
        assert ("activating", "auto-restart") not in recorder.of("policy.service")
        assert file_lines(tmp_path / "count") == ["start"]


def test_restart_storm_hits_the_start_limit(runner, tmp_path):
    runner.load("storm.service", unit("""
        [Unit]
        StartLimitBurst=3
        StartLimitIntervalSec=60
        [Service]
        Environment=OUT=@out@
        ExecStart=/bin/sh -c 'echo start >> "$OUT/count"; exit 1'
        Restart=always
        RestartSec=0
    """, out=tmp_path))
    runner.start("storm.service")
    wait_state(runner, "storm.service", "failed", "failed")
    assert file_lines(tmp_path / "count") == ["start"] * 3
    assert "Start request repeated too quickly." in journal_text(runner, "storm.service")


def test_a_new_version_of_a_unit_starts_afresh_under_its_start_limit(runner, tmp_path):
    """The start limit counts one version's starts: replacing a unit (new content) more
    often than the limit allows is not a restart storm."""
    def version(n: int) -> UnitFile:
        return unit(f"""
            [Unit]
            StartLimitBurst=2
            StartLimitIntervalSec=60
            [Service]
            Environment=OUT=@out@
            ExecStart=/bin/sh -c 'echo v{n} >> "$OUT/count"; exec sleep 30'
        """, out=tmp_path)

    for n in range(4):
        runner.load("roll.service", version(n))
        runner.start("roll.service")
        assert wait_for(lambda n=n: file_lines(tmp_path / "count")[-1:] == [f"v{n}"])
        runner.stop("roll.service")
        assert wait_for(lambda: state(runner, "roll.service").active == "inactive")
    assert file_lines(tmp_path / "count") == ["v0", "v1", "v2", "v3"]
    assert "Start request repeated too quickly." not in journal_text(runner, "roll.service")
    runner.start("roll.service")  # the same version's second start: still within the limit
    assert wait_for(lambda: len(file_lines(tmp_path / "count")) == 5)
    runner.stop("roll.service")
    assert wait_for(lambda: state(runner, "roll.service").active == "inactive")
    runner.start("roll.service")  # its third: refused
    wait_state(runner, "roll.service", "failed", "failed")
    assert "Start request repeated too quickly." in journal_text(runner, "roll.service")


# -- oneshot -------------------------------------------------------------------------------


@pytest.mark.parametrize("remain, final", [
    pytest.param("yes", ("active", "exited"), id="RemainAfterExit=yes stays active/exited"),
    pytest.param("no", ("inactive", "dead"), id="RemainAfterExit=no ends inactive/dead"),
])
def test_oneshot_runs_its_commands_in_order(runner, recorder, tmp_path, remain, final):
    runner.load("once.service", unit(f"""
        [Service]
        Type=oneshot
        RemainAfterExit={remain}
        Environment=OUT=@out@
        ExecStart=/bin/sh -c 'echo one >> "$OUT/log"'
        ExecStart=/bin/sh -c 'echo two >> "$OUT/log"'
        ExecStop=/bin/sh -c 'echo stop >> "$OUT/log"'
    """, out=tmp_path))
    runner.start("once.service")
    wait_settled(runner, recorder, "once.service", *final)
    assert ("activating", "start") in recorder.of("once.service")
    assert ("active", "running") not in recorder.of("once.service")
    if remain == "yes":
        assert file_lines(tmp_path / "log") == ["one", "two"]
        runner.stop("once.service")
        wait_state(runner, "once.service", "inactive", "dead")
    # ExecStop= runs when a started oneshot goes down, as in systemd.
    assert file_lines(tmp_path / "log") == ["one", "two", "stop"]


# -- stopping ------------------------------------------------------------------------------


def test_stop_timeout_sigkills_a_group_that_ignores_sigterm(runner, recorder):
    runner.load("stubborn.service", unit("""
        [Service]
        ExecStart=/bin/sh -c 'trap "" TERM; sleep 300 & sleep 300'
        TimeoutStopSec=1
    """))
    runner.start("stubborn.service")
    wait_state(runner, "stubborn.service", "active", "running")
    assert wait_for(lambda: len(runner.processes("stubborn.service")) >= 2)
    pids = runner.processes("stubborn.service")
    asked = time.monotonic()
    runner.stop("stubborn.service")
    wait_state(runner, "stubborn.service", "failed", "failed")
    assert time.monotonic() - asked >= 0.9
    # Gone, not even zombies: the guard outlives the SIGKILL and reaps what it killed.
    assert wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in pids), 5)
    assert ("deactivating", "stop-sigkill") in recorder.of("stubborn.service")
    assert "State 'stop-sigterm' timed out. Killing." in journal_text(runner, "stubborn.service")
    assert "Result: timeout" in runner.status_text("stubborn.service")


def test_a_stopped_main_process_is_continued_so_that_sigterm_ends_it(runner):
    runner.load("frozen.service", unit("""
        [Service]
        ExecStart=/bin/sleep 300
        TimeoutStopSec=60
    """))
    runner.start("frozen.service")
    wait_state(runner, "frozen.service", "active", "running")
    pid = runner.main_pid("frozen.service")
    os.kill(pid, signal.SIGSTOP)
    assert wait_for(lambda: _proc_state(pid) == "T"), _proc_state(pid)
    asked = time.monotonic()
    runner.stop("frozen.service")
    wait_state(runner, "frozen.service", "inactive", "dead", timeout=30)
    # SIGTERM, then SIGCONT: it ends at once, by SIGTERM, long before the stop timeout.
    assert time.monotonic() - asked < 30
    assert "code=killed, status=15/TERM" in journal_text(runner, "frozen.service")


def _proc_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return "gone"
    return stat[stat.rfind(b")") + 2:].split()[0].decode()


def _open_on(path: Path) -> int:
    """How many file descriptors of this process are open on `path`."""
    found = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            found += os.readlink(f"/proc/self/fd/{fd}") == str(path)
        except OSError:
            pass
    return found


def test_a_running_unit_keeps_its_log_open_and_an_idle_or_forgotten_one_does_not(runner):
    runner.load("held.service", unit("""
        [Service]
        ExecStart=/bin/sleep 300
    """))
    log = runner.state_dir / "logs" / "held.service.log"
    runner.start("held.service")
    wait_state(runner, "held.service", "active", "running")
    assert _open_on(log) == 1
    runner.stop("held.service")
    wait_state(runner, "held.service", "inactive", "dead")
    assert wait_for(lambda: _open_on(log) == 0), "an inactive unit's log stays open"
    runner.start("held.service")
    wait_state(runner, "held.service", "active", "running")
    assert _open_on(log) == 1
    runner.unload("held.service")
    assert wait_for(lambda: "held.service" not in runner.units())
    assert _open_on(log) == 0
    lines = log.read_text().splitlines()
    assert sum("Started held.service." in line for line in lines) == 2, lines


def test_exec_stop_and_stop_post_run_in_order(runner, tmp_path):
    runner.load("tidy.service", unit("""
        [Service]
        Environment=OUT=@out@
        ExecStart=/bin/sleep 300
        ExecStop=/bin/sh -c 'echo "stop $MAINPID" >> "$OUT/log"'
        ExecStopPost=/bin/sh -c 'echo "post $SERVICE_RESULT" >> "$OUT/log"'
    """, out=tmp_path))
    runner.start("tidy.service")
    wait_state(runner, "tidy.service", "active", "running")
    main = wait_for(lambda: runner.main_pid("tidy.service"))
    runner.stop("tidy.service")
    wait_state(runner, "tidy.service", "inactive", "dead")
    assert file_lines(tmp_path / "log") == [f"stop {main}", "post success"]


# -- environment, paths, specifiers --------------------------------------------------------


def test_environment_files_directory_and_specifiers_reach_the_process(make_runner, tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "srv" / "app").mkdir(parents=True)
    (root / "etc" / "environment").write_text(
        '# node facts\nFROM_FILE="quoted value"\nOVERRIDDEN=file\n')
    out = tmp_path / "out"
    out.mkdir()
    runner = make_runner(root_dir=root)
    recorder = Recorder()
    runner.subscribe(recorder)
    runner.load("app@blue.service", unit(r"""
        [Service]
        Type=oneshot
        Environment="GREETING=hello world" PLAIN=1 OVERRIDDEN=unit OUT=@out@
        Environment=NAME=%n STEM=%N PREFIX=%p INSTANCE=%i MACHINE=%m HOST=%H PERCENT=100%%
        Environment=SPLIT="a b" JOINED="c d"
        EnvironmentFile=/etc/environment
        EnvironmentFile=-/etc/missing
        WorkingDirectory=/srv/app
        ExecStart=/bin/sh -c 'env > "$OUT/env"; pwd > "$OUT/pwd"; \
            for a in "$@"; do echo "$a"; done > "$OUT/args"' argv0 $SPLIT ${JOINED}x %i
    """, out=out))
    runner.start("app@blue.service")
    wait_settled(runner, recorder, "app@blue.service", "inactive", "dead")
    env = dict(line.split("=", 1) for line in file_lines(out / "env") if "=" in line)
    assert {key: env.get(key) for key in (
        "GREETING", "PLAIN", "OVERRIDDEN", "FROM_FILE", "NAME", "STEM", "PREFIX", "INSTANCE",
        "MACHINE", "HOST", "PERCENT")} == {
        "GREETING": "hello world", "PLAIN": "1", "OVERRIDDEN": "file",
        "FROM_FILE": "quoted value", "NAME": "app@blue.service", "STEM": "app@blue",
        "PREFIX": "app", "INSTANCE": "blue", "MACHINE": MACHINE_ID, "HOST": HOSTNAME,
        "PERCENT": "100%"}
    assert file_lines(out / "pwd") == [str((root / "srv" / "app").resolve())]
    assert file_lines(out / "args") == ["a", "b", "c dx", "blue"]


@pytest.mark.parametrize("setting", [
    pytest.param("EnvironmentFile=/../outside.env", id="EnvironmentFile climbing out"),
    pytest.param("EnvironmentFile=-/../outside.env", id="optional EnvironmentFile climbing out"),
    pytest.param("EnvironmentFile=/etc/link.env", id="EnvironmentFile symlink leading out"),
    pytest.param("WorkingDirectory=/../..", id="WorkingDirectory climbing out"),
])
def test_paths_outside_the_node_root_are_refused(make_runner, tmp_path, setting):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (tmp_path / "outside.env").write_text("SECRET=1\n")
    (root / "etc" / "link.env").symlink_to(tmp_path / "outside.env")
    runner = make_runner(root_dir=root)
    runner.load("jail.service", unit(f"""
        [Service]
        {setting}
        ExecStart=/bin/sh -c 'touch "@out@/ran"; exec sleep 300'
    """, out=tmp_path))
    runner.start("jail.service")
    wait_state(runner, "jail.service", "failed", "failed")
    assert "outside the node root" in journal_text(runner, "jail.service")
    assert not (tmp_path / "ran").exists()


def test_missing_environment_file_fails_the_start(runner):
    runner.load("envless.service", unit("""
        [Service]
        EnvironmentFile=/nonexistent/fleetd-test.env
        ExecStart=/bin/sleep 300
    """))
    runner.start("envless.service")
    wait_state(runner, "envless.service", "failed", "failed")
    assert "Failed to load environment file /nonexistent/fleetd-test.env" in \
        journal_text(runner, "envless.service")


# -- dependencies --------------------------------------------------------------------------


SIDEKICK = """
    [Unit]
    BindsTo=web@%i.service
    After=web@%i.service
    [Service]
    ExecStart=/bin/sleep 300
"""


@pytest.mark.parametrize("how", ["parent stopped", "parent killed"])
def test_sidekick_bound_to_its_parent_goes_down_with_it(runner, recorder, how):
    runner.load("web@1.service", unit("""
        [Service]
        ExecStart=/bin/sleep 300
    """))
    runner.load("web-discovery@1.service", unit(SIDEKICK))
    runner.start("web-discovery@1.service")  # starts the parent first
    wait_state(runner, "web-discovery@1.service", "active", "running")
    wait_state(runner, "web@1.service", "active", "running")
    assert recorder.index("web@1.service", "active", "running") < \
        recorder.index("web-discovery@1.service", "activating", "start")
    sidekick_pids = runner.processes("web-discovery@1.service")

    if how == "parent stopped":
        runner.stop("web@1.service")
        wait_state(runner, "web@1.service", "inactive", "dead")
        # Reverse order: the sidekick is down before the parent is even signalled.
        assert recorder.index("web-discovery@1.service", "inactive", "dead") < \
            recorder.index("web@1.service", "deactivating", "stop-sigterm")
    else:
        os.kill(runner.main_pid("web@1.service"), signal.SIGKILL)
        wait_state(runner, "web@1.service", "failed", "failed")
        wait_journal(runner, "web-discovery@1.service",
                     "Bound to unit web@1.service, but unit isn't active.")
    wait_state(runner, "web-discovery@1.service", "inactive", "dead")
    assert not any(alive(pid) for pid in sidekick_pids)


def test_parent_and_sidekick_replaced_together_both_end_up_running(runner):
    """What an agent does when a parent's content changes (and so its sidekick's): unload
    both, load the new contents, start both at once, sidekick first. The old parent
    ending while the new one is queued must not take the new sidekick down: systemd stops
    a BindsTo= unit only once it is active and its parent has no start pending."""
    parent = """
        [Service]
        ExecStart=/bin/sleep {n}
    """
    runner.load("web@1.service", unit(parent.format(n=300)))
    runner.load("web-discovery@1.service", unit(SIDEKICK))
    runner.start("web-discovery@1.service")
    wait_state(runner, "web-discovery@1.service", "active", "running")
    names = ("web@1.service", "web-discovery@1.service")
    for _ in range(3):
        old = {name: runner.main_pid(name) for name in names}
        runner.unload("web-discovery@1.service")
        runner.unload("web@1.service")
        runner.load("web-discovery@1.service", unit(SIDEKICK + "\nEnvironment=X=1\n"))
        runner.load("web@1.service", unit(parent.format(n=301)))
        runner.start("web-discovery@1.service")
        runner.start("web@1.service")
        # The new processes, running: unload returns at once, so the old ones may still
        # read active/running while their stop is on its way.
        for name in names:
            replaced = wait_for(lambda n=name, was=old[name]: runner.main_pid(n) not in (None, was)
                                and state(runner, n) == UnitStatus("loaded", "active", "running"))
            assert replaced, (f"{name} is {state(runner, name)}, not running a new process; "
                              f"journal:\n{journal_text(runner, name)}")
        sidekick = runner.main_pid("web-discovery@1.service")
        # Still running a moment later: nothing stops it behind our back.
        time.sleep(0.3)
        assert state(runner, "web-discovery@1.service").active == "active"
        assert runner.main_pid("web-discovery@1.service") == sidekick


def test_new_content_started_over_a_running_unit_never_reads_active_before_it_runs(runner):
    """What an agent does on new content: unload, load, start, then read the state it
    publishes. Until the old process is gone and the new one runs, that state must not
    say active (a rolling replace would take the old process for the new one, and take
    the next unit down while this one is still down). The worker threads are held off
    (the runner's lock) so the read surely comes before they act."""
    runner.load("web@1.service", unit("[Service]\nExecStart=/bin/sleep 300\n"))
    runner.start("web@1.service")
    wait_state(runner, "web@1.service", "active", "running")
    old = runner.main_pid("web@1.service")
    with runner.cond:
        runner.unload("web@1.service")
        runner.load("web@1.service", unit("[Service]\nExecStart=/bin/sleep 301\n"))
        runner.start("web@1.service")
        assert state(runner, "web@1.service").active == "deactivating"
    assert wait_for(lambda: runner.main_pid("web@1.service") not in (None, old)
                    and state(runner, "web@1.service").active == "active")
    assert not alive(old)


def test_requires_starts_the_dependency_first_and_stop_propagates(runner, recorder):
    runner.load("db.service", unit("""
        [Service]
        ExecStart=/bin/sleep 300
    """))
    runner.load("app.service", unit("""
        [Unit]
        Requires=db.service
        After=db.service
        [Service]
        ExecStart=/bin/sleep 300
    """))
    runner.start("app.service")
    wait_state(runner, "app.service", "active", "running")
    assert state(runner, "db.service").active == "active"
    assert recorder.index("db.service", "active", "running") < \
        recorder.index("app.service", "activating", "start")
    runner.stop("db.service")
    wait_state(runner, "app.service", "inactive", "dead")
    wait_state(runner, "db.service", "inactive", "dead")


def test_unit_does_not_start_when_a_required_unit_fails(runner, tmp_path):
    runner.load("db.service", unit("""
        [Service]
        ExecStartPre=/bin/false
        ExecStart=/bin/sleep 300
    """))
    runner.load("app.service", unit("""
        [Unit]
        Requires=db.service
        [Service]
        ExecStart=/bin/sh -c 'touch "@out@/app-ran"; exec sleep 300'
    """, out=tmp_path))
    runner.start("app.service")
    wait_state(runner, "db.service", "failed", "failed")
    wait_journal(runner, "app.service", "Dependency failed for app.service.")
    wait_state(runner, "app.service", "inactive", "dead")
    assert not (tmp_path / "app-ran").exists()


# -- reporting -----------------------------------------------------------------------------


def test_subscribers_see_every_transition_in_order(runner):
    seen = Recorder()

    def broken(name, status):
        raise RuntimeError("a broken listener must not silence the others")

    runner.subscribe(broken)
    runner.subscribe(seen)
    runner.load("steps.service", unit("""
        [Service]
        ExecStartPre=/bin/true
        ExecStart=/bin/sleep 300
        ExecStartPost=/bin/true
        ExecStop=/bin/true
    """))
    runner.start("steps.service")
    wait_state(runner, "steps.service", "active", "running")
    runner.stop("steps.service")
    expected = [
        ("inactive", "dead"), ("activating", "start-pre"), ("activating", "start"),
        ("activating", "start-post"), ("active", "running"), ("deactivating", "stop"),
        ("deactivating", "stop-sigterm"), ("inactive", "dead"),
    ]
    assert wait_for(lambda: seen.of("steps.service") == expected), seen.of("steps.service")
    assert threading.current_thread().name not in seen.threads


def test_status_text_and_journal(runner, tmp_path):
    runner.load("greeter.service", unit("""
        [Unit]
        Description=Greeter
        [Service]
        ExecStart=/bin/sh -c 'echo hello from greeter; \
            while [ ! -e "@out@/go" ]; do sleep 0.02; done; echo second line; exec sleep 300'
    """, out=tmp_path))
    runner.start("greeter.service")
    wait_state(runner, "greeter.service", "active", "running")
    wait_journal(runner, "greeter.service", "hello from greeter")

    status = runner.status_text("greeter.service")
    lines = status.splitlines()
    assert lines[0] == "\u25cf greeter.service - Greeter"
    assert lines[1].strip() == f"Loaded: loaded ({runner.state_dir / 'units' / 'greeter.service'})"
    assert lines[2].strip().startswith("Active: active (running) since ")
    assert lines[2].endswith(" ago")
    assert lines[3].strip() == f"Main PID: {runner.main_pid('greeter.service')} (sh)"
    assert "Starting Greeter..." in status and "hello from greeter" in status

    last = list(runner.journal("greeter.service", lines=2))
    assert len(last) == 2  # "Started Greeter." and the output, in either order
    greeting = next(line for line in last if line.endswith("hello from greeter"))
    assert f" {HOSTNAME} sh[{runner.main_pid('greeter.service')}]: " in greeting

    followed: list[str] = []

    def follow() -> None:
        stream = runner.journal("greeter.service", lines=1, follow=True)
        for line in stream:
            followed.append(line)
            if "second line" in line:
                break
        stream.close()

    reader = threading.Thread(target=follow)
    reader.start()
    assert wait_for(lambda: followed)
    (tmp_path / "go").touch()
    assert wait_for(lambda: any("second line" in line for line in followed)), followed
    reader.join(5)
    assert not reader.is_alive()

    with pytest.raises(RunnerError, match=r"Unit nope\.service does not exist\."):
        runner.status_text("nope.service")
    assert list(runner.journal("nope.service")) == []


def test_unknown_and_broken_units(runner):
    assert state(runner, "ghost.service") == UnitStatus("not-found", "inactive", "dead")
    with pytest.raises(RunnerError, match="not found"):
        runner.start("ghost.service")
    runner.stop("ghost.service")  # stopping what is not there is a no-op
    runner.unload("ghost.service")
    with pytest.raises(RunnerError, match="invalid unit name"):
        runner.load("bad name", unit("[Service]\nExecStart=/bin/true\n"))
    runner.load("empty.service", unit("[Service]\nType=simple\n"))
    assert state(runner, "empty.service").load == "error"
    with pytest.raises(RunnerError, match="no ExecStart="):
        runner.start("empty.service")
    assert "no ExecStart=" in runner.status_text("empty.service")


# -- loading, unloading, shutdown ----------------------------------------------------------


def test_load_while_running_only_records_and_unload_stops_and_forgets(runner, recorder):
    runner.load("live.service", unit("[Service]\nExecStart=/bin/sleep 300\n"))
    runner.start("live.service")
    wait_state(runner, "live.service", "active", "running")
    main = wait_for(lambda: runner.main_pid("live.service"))
    path = runner.state_dir / "units" / "live.service"

    runner.load("live.service", unit("[Service]\nExecStart=/bin/sleep 301\n"))
    assert "sleep 301" in path.read_text()
    assert state(runner, "live.service") == UnitStatus("loaded", "active", "running")
    assert runner.main_pid("live.service") == main

    runner.unload("live.service")
    assert wait_for(lambda: "live.service" not in runner.units())
    assert wait_for(lambda: recorder.events[-1] == ("live.service", "not-found", "inactive",
                                                    "dead"))
    assert wait_for(lambda: not alive(main), 5)
    assert not path.exists()


def test_shutdown_stops_dependents_first_and_refuses_new_work(runner, recorder):
    runner.load("web@2.service", unit("[Service]\nExecStart=/bin/sleep 300\n"))
    runner.load("web-discovery@2.service", unit(SIDEKICK))
    runner.start("web-discovery@2.service")
    wait_state(runner, "web-discovery@2.service", "active", "running")
    pids = runner.processes("web@2.service") + runner.processes("web-discovery@2.service")
    runner.shutdown()
    assert all(status.active == "inactive" for status in runner.units().values())
    assert recorder.index("web-discovery@2.service", "inactive", "dead") < \
        recorder.index("web@2.service", "deactivating", "stop-sigterm")
    assert not any(alive(pid) for pid in pids)
    with pytest.raises(RunnerError, match="shut down"):
        runner.start("web@2.service")


# -- orphan safety -------------------------------------------------------------------------


ORPHAN_SCRIPT = """
import sys, threading, time
sys.path.insert(0, {repo!r})
from pathlib import Path
from fleetd.runner.process import ProcessRunner
from fleetd.unit.unitfile import parse_unit_file

def begin():
    runner = ProcessRunner(Path(sys.argv[1]), "m1", "h1",
                           env={{"PATH": "/usr/bin:/bin", {mark!r}: sys.argv[2]}})
    runner.load("orphan.service", parse_unit_file(Path(sys.argv[4]).read_text()))
    runner.start("orphan.service")
    return runner

if sys.argv[3] == "thread":  # the thread that made the runner ends; its units must not
    box = []
    maker = threading.Thread(target=lambda: box.append(begin()))
    maker.start()
    maker.join()
    runner = box[0]
else:
    runner = begin()
deadline = time.monotonic() + 20
while runner.units()["orphan.service"].sub != "running" and time.monotonic() < deadline:
    time.sleep(0.02)
print(runner.units()["orphan.service"].sub, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("where", [
    pytest.param("main", id="runner made on the main thread"),
    pytest.param("thread", id="runner made on a thread that ended"),
])
def test_sigkilled_runner_takes_its_units_along(tmp_path, where):
    marker = uuid.uuid4().hex
    script = tmp_path / "owner.py"
    script.write_text(ORPHAN_SCRIPT.format(repo=str(REPO), mark=MARK))
    unit_path = tmp_path / "orphan.service"
    unit_path.write_text("[Service]\n"
                         f"ExecStart=/bin/sh -c '{sys.executable} -c \"{ESCAPER}\" & "
                         "sleep 300 & sleep 300'\n")
    owner = subprocess.Popen([sys.executable, str(script), str(tmp_path / "state"), marker, where,
                              str(unit_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "running"
        assert wait_for(lambda: escaped_and_two_sleeps(marked_processes(marker))), \
            comms(marked_processes(marker))
        owner.kill()
        owner.wait(10)
        assert wait_for(lambda: not marked_processes(marker), 5), marked_processes(marker)
    finally:
        owner.kill()
        owner.wait(10)
        owner.stdout.close()
        for pid in marked_processes(marker):
            os.kill(pid, signal.SIGKILL)


# -- the pure parts ------------------------------------------------------------------------


@pytest.mark.parametrize("text, seconds", [
    pytest.param("5", 5.0, id="bare number is seconds"),
    pytest.param("5s", 5.0, id="seconds"),
    pytest.param("500ms", 0.5, id="milliseconds"),
    pytest.param("1min", 60.0, id="minutes"),
    pytest.param("1m 30s", 90.0, id="parts add up"),
    pytest.param("1h5min", 3900.0, id="parts without blanks"),
    pytest.param("0.2", 0.2, id="fraction"),
    pytest.param("infinity", None, id="infinity is no limit"),
])
def test_parse_timespan(text, seconds):
    if seconds is None:
        assert parse_timespan(text) is None
    else:
        assert parse_timespan(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5 parsecs", "abc", "-1s"])
def test_parse_timespan_refuses(text):
    with pytest.raises(ValueError):
        parse_timespan(text)


@pytest.mark.parametrize("text, pairs", [
    pytest.param("A=1\nB=2\n", [("A", "1"), ("B", "2")], id="plain lines"),
    pytest.param("# c\n; c\n\nA=1", [("A", "1")], id="comments and blank lines"),
    pytest.param('A="x y" \nB=\'$z\'', [("A", "x y"), ("B", "$z")], id="quotes"),
    pytest.param('A="a\\"b\\\\c\\n"', [("A", 'a"b\\c\\n')], id="double-quote escapes"),
    pytest.param("A=x \\\n y\nB=t  ", [("A", "x  y"), ("B", "t")],
                 id="continuation and trailing blanks"),
    pytest.param("  A = 1", [("A", "1")], id="blanks around the name"),
    pytest.param("NOEQUALS\n1BAD=x\nOK=y", [("OK", "y")], id="bad lines skipped"),
])
def test_parse_environment_file(text, pairs):
    assert parse_environment_file(text)[0] == pairs


@pytest.mark.parametrize("words, expected", [
    pytest.param(["$A"], ["x", "y"], id="standalone $VAR splits"),
    pytest.param(["${A}"], ["x y"], id="braced var does not split"),
    pytest.param(["pre${B}post"], ["pre1post"], id="braced var inside a word"),
    pytest.param(["$UNSET", "z"], ["z"], id="unset standalone var vanishes"),
    pytest.param(["a$B"], ["a$B"], id="unbraced var inside a word stays"),
    pytest.param(["$$B"], ["$B"], id="double dollar is a literal dollar"),
    pytest.param(["${UNSET:-dflt}", "${B:+alt}"], ["dflt", "alt"], id="defaults"),
])
def test_expand_variables(words, expected):
    assert expand_variables(words, {"A": "x y", "B": "1"}) == expected


def test_specifiers():
    name = parse_unit_name("web-x@a-b.service")
    table = specifier_table(name, SpecifierContext(machine_id="mid", hostname="h"))
    assert expand_specifiers("%n %N %p %i %I %m %H %%", table) == \
        "web-x@a-b.service web-x@a-b web-x a-b a/b mid h %"
    with pytest.raises(ExpansionError, match="unknown specifier %q"):
        expand_specifiers("%q", table)
    with pytest.raises(ExpansionError, match="lone"):
        expand_specifiers("100%", table)


@pytest.mark.parametrize("text, message", [
    pytest.param("[Service]\nType=simple\n", "no ExecStart=", id="simple without ExecStart"),
    pytest.param("[Service]\nExecStart=/bin/a\nExecStart=/bin/b\n", "more than one",
                 id="two ExecStart for simple"),
    pytest.param("[Service]\nExecStart=/bin/echo 'open\n", "unterminated", id="bad quoting"),
    pytest.param("[Service]\nExecStart=/bin/echo %q\n", "unknown specifier",
                 id="unknown specifier"),
    pytest.param("[Service]\nExecStart=/bin/true\nEnvironmentFile=relative\n", "absolute",
                 id="relative EnvironmentFile"),
])
def test_service_config_refusals(text, message):
    context = SpecifierContext(machine_id="m", hostname="h")
    with pytest.raises(ConfigError, match=message):
        parse_service_config(parse_unit_file(text), parse_unit_name("x.service"), context)


_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=40)


@given(_TEXT)
def test_doubled_percent_signs_expand_to_the_text_itself(text):
    table = specifier_table(parse_unit_name("a.service"),
                            SpecifierContext(machine_id="m", hostname="h"))
    assert expand_specifiers(text.replace("%", "%%"), table) == text


@given(_TEXT)
def test_double_quoted_env_file_values_round_trip(value):
    quoted = "".join("\\" + ch if ch in '"\\`$' else ch for ch in value)
    assert parse_environment_file(f'KEY="{quoted}"\n')[0] == [("KEY", value)]


@given(st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="$"),
                        max_size=10), max_size=5))
def test_words_without_dollar_pass_unchanged(words):
    assert expand_variables(words, {"A": "x"}) == words
