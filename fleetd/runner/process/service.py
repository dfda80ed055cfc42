"""One unit's life in the process runner, in systemd's states.

A `ServiceWorker` thread runs one unit (its `Unit` record, state.py) from a
start request until it is inactive (or failed) again, restarts included:

    activating/start-pre → activating/start → activating/start-post
      → active/running (or active/exited) → deactivating/stop → stop-sigterm
      → stop-sigkill → stop-post → inactive/dead | failed/failed | activating/auto-restart

The worker blocks on its unit's condition (`Unit.changed`); process exits, stop
requests and shutdown notify it. It never raises: anything unexpected is written to the
unit's journal and the unit fails.
"""

from __future__ import annotations

import logging
import signal
import time
import uuid
from collections.abc import Callable, Mapping

from fleetd.runner.process.procs import ExitInfo, Proc, SpawnRequest, signal_name
from fleetd.runner.process.settings import ExecCommand, ServiceConfig
from fleetd.runner.process.specifiers import expand_variables
from fleetd.runner.process.state import Owner, StartError, Unit

_LOG = logging.getLogger(__name__)
KILL_WAIT = 10.0  # how long to wait for SIGKILLed processes to vanish before giving up
ABORT_KILL_WAIT = 3.0
# A wait re-checks its condition this often even unnotified (every change notifies the
# unit's condition; this is a safety net, kept long so 1,000 idle units cost no CPU).
IDLE_RECHECK_S = 30.0


class ServiceWorker:
    def __init__(self, owner: Owner, unit: Unit) -> None:
        self.owner = owner
        self.unit = unit
        self.cond = owner.cond

    # -- the whole life ---------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._life()
        except Exception as err:  # never raise from a background thread
            _LOG.exception("unit worker for %s failed", self.unit.full)
            self.unit.say(f"{self.unit.full}: internal error in the process runner: {err!r}")
            for proc in list(self.unit.procs):
                self.owner.host.kill(proc, signal.SIGKILL)
            with self.cond:
                self.unit.result = "resources"
                self.unit.start_pending = False
                self.owner.set_state(self.unit, "failed", "failed")
                self.owner.worker_done(self.unit, restart=False)

    def _life(self) -> None:
        unit = self.unit
        while True:
            with self.cond:
                config = unit.config
                unit.result = "success"
                unit.main = None
                unit.main_accounted = False
            if config is None:
                unit.say(f"{unit.full}: cannot start: {unit.load_error}")
                with self.cond:
                    unit.result = "resources"
                    self.owner.set_state(unit, "failed", "failed")
                    if self.owner.worker_done(unit, restart=False):
                        continue
                return
            if not self._within_start_limit(config):
                with self.cond:
                    unit.result = "start-limit-hit"
                    self.owner.set_state(unit, "failed", "failed")
                    if self.owner.worker_done(unit, restart=False):
                        continue
                return
            deps = self.owner.start_dependencies(unit, config)
            if deps != "ok":
                if deps == "dependency":
                    unit.say(f"Dependency failed for {config.description}.")
                with self.cond:
                    self.owner.set_state(unit, "inactive", "dead")
                    if self.owner.worker_done(unit, restart=False):
                        continue
                return
            was_active = self._activate(config)
            self._deactivate(config, was_active)
            if not self._settle(config):
                return

    def _within_start_limit(self, config: ServiceConfig) -> bool:
        now = time.monotonic()
        times = self.unit.start_times
        if config.start_limit_interval <= 0 or config.start_limit_burst <= 0:
            times.clear()
            return True
        times.append(now)
        while times and now - times[0] > config.start_limit_interval:
            times.popleft()
        if len(times) <= config.start_limit_burst:
            return True
        self.unit.say(f"{self.unit.full}: Start request repeated too quickly.")
        self.unit.say(f"Failed to start {config.description}.")
        return False

    def _settle(self, config: ServiceConfig) -> bool:
        """After deactivation: restart, start again, or end. True to go round again."""
        unit = self.unit
        with self.cond:
            if unit.stop_requested:
                unit.say(f"Stopped {config.description}.")
            elif unit.result == "success":
                unit.say(f"{unit.full}: Deactivated successfully.")
            if unit.result != "success":
                unit.say(f"{unit.full}: Failed with result '{unit.result}'.")
            restart = (not unit.stop_requested and not self.owner.aborting
                       and config.kind == "service" and config.restarts_after(unit.result))
            if not restart:
                final = ("inactive", "dead") if unit.result == "success" else ("failed", "failed")
                self.owner.set_state(unit, *final)
                return self.owner.worker_done(unit, restart=False)
            unit.say(f"{unit.full}: Scheduled restart job.")
            self.owner.set_state(unit, "activating", "auto-restart")
        deadline = time.monotonic() + config.restart_sec
        outcome = self._wait(lambda: unit.restart_now, deadline)
        with self.cond:
            unit.restart_now = False
            if outcome in ("stop", "abort"):
                self.owner.set_state(unit, "inactive", "dead")
                return self.owner.worker_done(unit, restart=False)
            return self.owner.worker_done(unit, restart=True)

    # -- activation -------------------------------------------------------------------------

    def _activate(self, config: ServiceConfig) -> bool:
        """Run the start phases; True once the unit was active (so ExecStop= applies)."""
        unit = self.unit
        unit.say(f"Starting {config.description}...")
        if config.kind == "unsupported":
            unit.say(f"{unit.full}: {config.unsupported_reason}")
            return self._start_failed(config, "resources")
        try:
            env, cwd = self.owner.execution_environment(unit, config)
        except StartError as err:
            unit.say(f"{unit.full}: {err}")
            return self._start_failed(config, "resources")
        env["INVOCATION_ID"] = uuid.uuid4().hex
        with self.cond:
            unit.env, unit.cwd = env, cwd
        if config.kind == "target":
            with self.cond:
                self.owner.set_state(unit, "active", "active")
            unit.say(f"Reached target {config.description}.")
            self._wait(lambda: False, None)
            return True
        if not self._run_phase("start-pre", config.exec_start_pre, config):
            return self._start_failed(config)
        if not self._start_main(config):
            return self._start_failed(config)
        if not self._run_phase("start-post", config.exec_start_post, config):
            return self._start_failed(config)
        return self._run(config)

    def _start_failed(self, config: ServiceConfig, result: str | None = None) -> bool:
        with self.cond:
            if result is not None and self.unit.result == "success":
                self.unit.result = result
            failed = self.unit.result != "success"
        if failed:
            self.unit.say(f"Failed to start {config.description}.")
        return False

    def _run_phase(self, sub: str, commands: tuple[ExecCommand, ...],
                   config: ServiceConfig) -> bool:
        if not commands:
            return True
        with self.cond:
            self.owner.set_state(self.unit, "activating", sub)
        deadline = _deadline(config.timeout_start)
        for command in commands:
            if self._control(command, sub, deadline, interruptible=True) != "ok":
                return False
        return True

    def _start_main(self, config: ServiceConfig) -> bool:
        unit = self.unit
        with self.cond:
            self.owner.set_state(unit, "activating", "start")
        deadline = _deadline(config.timeout_start)
        if config.type == "oneshot":
            for command in config.exec_start:
                proc = self._spawn(command)
                with self.cond:
                    unit.main, unit.main_accounted = proc, False
                if proc is None:
                    return self._fail("resources")
                outcome = self._wait(lambda p=proc: p.exit is not None, deadline)
                if outcome != "ok":
                    return self._interrupted(outcome, "start", proc)
                if not self._account_main(config, command.ignore_failure):
                    return False
            return True
        proc = self._spawn(config.exec_start[0])
        with self.cond:
            unit.main, unit.main_accounted = proc, False
        if proc is None:
            return self._fail("resources")
        if config.type == "forking":
            outcome = self._wait(lambda: proc.exit is not None, deadline)
            if outcome != "ok":
                return self._interrupted(outcome, "start", proc)
            return self._account_main(config, False)
        # simple: started once the command runs (the supervisor reports its pid once spawned)
        outcome = self._wait(lambda: proc.main_pid is not None or proc.exit is not None,
                             deadline)
        if outcome != "ok":
            return self._interrupted(outcome, "start", proc)
        if proc.exit is not None and proc.exec_error is not None:
            return self._account_main(config, False)
        return True

    def _run(self, config: ServiceConfig) -> bool:
        unit = self.unit
        main = unit.main
        if config.type == "oneshot":
            if not config.remain_after_exit:
                unit.say(f"Finished {config.description}.")
                return True
            with self.cond:
                self.owner.set_state(unit, "active", "exited")
            unit.say(f"Started {config.description}.")
            self._wait(lambda: False, None)
            return True
        with self.cond:
            self.owner.set_state(unit, "active", "running")
        unit.say(f"Started {config.description}.")
        if main is None:
            return True
        ended: Callable[[], bool] = (lambda: main.done) if config.type == "forking" \
            else (lambda: main.exit is not None)
        if self._wait(ended, None) != "ok":
            return True
        if config.type == "forking":
            return True  # everything the start command left behind has ended
        clean = self._account_main(config, False)
        if clean and config.remain_after_exit:
            with self.cond:
                self.owner.set_state(unit, "active", "exited")
            self._wait(lambda: False, None)
        return True

    def _account_main(self, config: ServiceConfig, ignore_failure: bool) -> bool:
        """Log how the main command ended and record a failure; True if it ended cleanly."""
        unit = self.unit
        with self.cond:
            main = unit.main
            if main is None or main.exit is None or unit.main_accounted:
                return True
            unit.main_accounted = True
            ended = main.exit
        if main.exec_error is not None:
            unit.say(f"{unit.full}: Failed to execute {main.argv[0] if main.argv else '?'}: "
                     f"{main.exec_error}")
        clean = config.is_clean_exit(ended.code, ended.signal)
        suffix = " (ignored)" if ignore_failure and not clean else ""
        unit.say(f"{unit.full}: Main process exited, {ended.describe()}{suffix}")
        if clean or ignore_failure:
            return True
        return self._fail(ended.result)

    def _fail(self, result: str) -> bool:
        with self.cond:
            if self.unit.result == "success":
                self.unit.result = result
        return False

    def _interrupted(self, outcome: str, phase: str, proc: Proc) -> bool:
        if outcome == "timeout":
            self.unit.say(f"{self.unit.full}: {phase} operation timed out. Terminating.")
            self.owner.host.kill(proc, signal.SIGTERM)
            return self._fail("timeout")
        return False  # stop requested or shutting down: not a failure

    def _control(self, command: ExecCommand, phase: str, deadline: float | None,
                 interruptible: bool, extra_env: Mapping[str, str] | None = None) -> str:
        """Run one control command to its end: ok | failed | timeout | stop | abort."""
        proc = self._spawn(command, extra_env)
        if proc is None:
            if command.ignore_failure:
                return "ok"
            self._fail("resources")
            return "failed"
        outcome = self._wait(lambda: proc.exit is not None, deadline, interruptible)
        if outcome == "timeout":
            self._interrupted(outcome, phase, proc)
            return "timeout"
        if outcome != "ok":
            return outcome
        ended = proc.exit
        assert ended is not None
        if proc.exec_error is not None:
            self.unit.say(f"{self.unit.full}: Failed to execute {proc.argv[0]}: "
                          f"{proc.exec_error}")
        if ended.code == 0:
            return "ok"
        ignored = " (ignored)" if command.ignore_failure else ""
        self.unit.say(f"{self.unit.full}: Control process exited, {ended.describe()}{ignored}")
        if command.ignore_failure:
            return "ok"
        self._fail(ended.result)
        return "failed"

    def _spawn(self, command: ExecCommand,
               extra_env: Mapping[str, str] | None = None) -> Proc | None:
        unit = self.unit
        with self.cond:
            env = dict(unit.env)
            cwd = unit.cwd
            unit.procs = unit.live_procs()
        env.update(extra_env or {})
        words = expand_variables(command.words, env) if command.expand_env \
            else list(command.words)
        if command.separate_argv0:
            executable, argv = (words[0], words[1:]) if words else ("", [])
        else:
            executable, argv = (words[0] if words else ""), words
        if not executable or not argv or not argv[0]:
            unit.say(f"{unit.full}: {command.setting}={command.line}: the command is empty "
                     "after expanding variables")
            return None
        try:
            proc = self.owner.host.spawn(SpawnRequest(executable, tuple(argv), env, cwd,
                                                      unit.log, unit.changed))
        except OSError as err:
            unit.say(f"{unit.full}: Failed to spawn {command.setting} task {argv[0]}: {err}")
            return None
        with self.cond:
            unit.procs.append(proc)
        return proc

    # -- deactivation -----------------------------------------------------------------------

    def _deactivate(self, config: ServiceConfig, was_active: bool) -> None:
        unit = self.unit
        with self.cond:
            stopping = unit.stop_requested
        if stopping:
            unit.say(f"Stopping {config.description}...")
            if not self.owner.aborting:
                self.owner.wait_stop_order(unit)
        with self.cond:
            result = unit.result
        aborting = self.owner.aborting  # shutdown ran out of time: kill, run nothing more
        if was_active and result == "success" and config.exec_stop and not aborting:
            with self.cond:
                self.owner.set_state(unit, "deactivating", "stop")
            deadline = _deadline(config.timeout_stop)
            for command in config.exec_stop:
                if self._control(command, "stop", deadline, False, self._main_env()) != "ok":
                    break
        self._terminate("stop-sigterm", "stop-sigkill", config)
        self._account_main(config, False)
        if config.exec_stop_post and not self.owner.aborting:
            with self.cond:
                self.owner.set_state(unit, "deactivating", "stop-post")
            deadline = _deadline(config.timeout_stop)
            for command in config.exec_stop_post:
                if self._control(command, "stop-post", deadline, False,
                                 self._result_env()) != "ok":
                    break
            self._terminate("final-sigterm", "final-sigkill", config)

    def _terminate(self, term_state: str, kill_state: str, config: ServiceConfig) -> None:
        unit = self.unit
        host = self.owner.host
        with self.cond:
            live = unit.live_procs()
            if not live:
                return
            self.owner.set_state(unit, "deactivating", term_state)
        for proc in live:
            host.kill(proc, signal.SIGTERM)  # the supervisor follows it with SIGCONT
        outcome = self._wait(lambda: not unit.live_procs(), _deadline(config.timeout_stop),
                             interruptible=False)
        if outcome == "ok":
            return
        if outcome == "timeout":
            unit.say(f"{unit.full}: State '{term_state}' timed out. Killing.")
            self._fail("timeout")
        with self.cond:
            self.owner.set_state(unit, "deactivating", kill_state)
            live = unit.live_procs()
        for proc in live:
            unit.say(f"{unit.full}: Killing process {proc.pid} ({proc.ident.split('[')[0]}) "
                     "and its process group with signal SIGKILL.")
            host.kill(proc, signal.SIGKILL)
        wait = ABORT_KILL_WAIT if self.owner.aborting else KILL_WAIT
        if self._wait(lambda: not unit.live_procs(), time.monotonic() + wait,
                      interruptible=False, abortable=False) == "ok":
            return
        for proc in unit.live_procs():
            host.kill_again(proc)
        if self._wait(lambda: not unit.live_procs(), time.monotonic() + ABORT_KILL_WAIT,
                      interruptible=False, abortable=False) != "ok":
            unit.say(f"{unit.full}: Processes still around after SIGKILL. Ignoring.")

    def _main_env(self) -> dict[str, str]:
        main = self.unit.main
        if main is not None and main.main_pid and main.exit is None:
            return {"MAINPID": str(main.main_pid)}
        return {}

    def _result_env(self) -> dict[str, str]:
        env = {"SERVICE_RESULT": self.unit.result}
        main = self.unit.main
        ended: ExitInfo | None = main.exit if main is not None else None
        if ended is not None:
            if ended.code is not None:
                env.update(EXIT_CODE="exited", EXIT_STATUS=str(ended.code))
            else:
                env.update(EXIT_CODE="killed", EXIT_STATUS=signal_name(ended.signal or 0))
        return env

    # -- waiting ----------------------------------------------------------------------------

    def _wait(self, predicate: Callable[[], bool], deadline: float | None,
              interruptible: bool = True, abortable: bool = True) -> str:
        """Block until `predicate` holds: ok | stop (stop requested) | abort | timeout."""
        with self.cond:
            while True:
                if predicate():
                    return "ok"
                if abortable and self.owner.aborting:
                    return "abort"
                if interruptible and self.unit.stop_requested:
                    return "stop"
                timeout = IDLE_RECHECK_S
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return "timeout"
                    timeout = min(timeout, remaining)
                self.unit.changed.wait(timeout)


def _deadline(seconds: float | None) -> float | None:
    return None if seconds is None else time.monotonic() + seconds
