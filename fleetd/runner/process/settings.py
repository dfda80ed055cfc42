"""The `[Unit]`/`[Service]` settings the process runner honours, parsed once, pure.

`parse_service_config` turns a unit file into a frozen `ServiceConfig` (or a
`ConfigError` saying why systemd would refuse the unit). Settings systemd would
merely warn about (a bad time span, an unknown Restart= value) become warnings
and the default is used, as systemd does. Environment files and `$VAR` are not
touched here: they are read when a command is about to run.
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass

from fleetd.runner.process.specifiers import (
    ExpansionError,
    SpecifierContext,
    expand_specifiers,
    parse_environment_words,
    specifier_table,
)
from fleetd.unit.names import UnitName
from fleetd.unit.unitfile import UnitFile, UnitFileError, split_command_line

DEFAULT_TIMEOUT = 90.0
DEFAULT_RESTART_SEC = 0.1
DEFAULT_START_LIMIT_BURST = 5
DEFAULT_START_LIMIT_INTERVAL = 10.0
RESTART_POLICIES = ("no", "always", "on-success", "on-failure", "on-abnormal", "on-abort",
                    "on-watchdog")
SUPPORTED_TYPES = ("simple", "exec", "oneshot", "forking")
APPROXIMATED_TYPES = ("notify", "notify-reload", "dbus", "idle")
EXEC_SETTINGS = ("ExecStartPre", "ExecStart", "ExecStartPost", "ExecStop", "ExecStopPost")
_TRUE = frozenset({"1", "yes", "y", "true", "t", "on"})
_FALSE = frozenset({"0", "no", "n", "false", "f", "off"})
_SPAN_UNITS = {
    "us": 1e-6, "usec": 1e-6, "µs": 1e-6,
    "ms": 1e-3, "msec": 1e-3,
    "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
    "w": 604800.0, "week": 604800.0, "weeks": 604800.0,
    "M": 2629800.0, "month": 2629800.0, "months": 2629800.0,
    "y": 31557600.0, "year": 31557600.0, "years": 31557600.0,
}
_SPAN_PART_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-zµ]*)")
_CLEAN_SIGNALS = frozenset({signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE})


class ConfigError(ValueError):
    """systemd would refuse to load this unit; the message says why."""


def parse_timespan(value: str) -> float | None:
    """A systemd time span in seconds; None means "no limit" (`infinity`).

    A bare number is seconds; parts add up: `5`, `5s`, `500ms`, `1min`, `1m 30s`.
    """
    text = value.strip()
    if text == "infinity":
        return None
    if not text:
        raise ValueError("empty time span")
    total = 0.0
    pos = 0
    while pos < len(text):
        match = _SPAN_PART_RE.match(text, pos)
        if not match or match.end() == pos:
            raise ValueError(f"cannot read time span {value!r}; write e.g. 5s, 500ms, 1min 30s "
                             "or infinity")
        number, unit = match.groups()
        if unit not in ("", *_SPAN_UNITS):
            raise ValueError(f"unknown time unit {unit!r} in {value!r}; use ms, s, min, h, d")
        total += float(number) * (_SPAN_UNITS[unit] if unit else 1.0)
        pos = match.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return total


def parse_boolean(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{value!r} is not a boolean; use yes or no")


@dataclass(frozen=True)
class ExecCommand:
    """One Exec*= line: its words (specifiers expanded, quotes removed) and its prefixes."""

    setting: str
    line: str
    words: tuple[str, ...]
    ignore_failure: bool = False  # `-`
    separate_argv0: bool = False  # `@`: the second word is argv[0]
    expand_env: bool = True  # `:` turns $VAR expansion off


@dataclass(frozen=True)
class ServiceConfig:
    kind: str  # service | target | unsupported
    description: str
    type: str = "simple"  # simple | oneshot | forking (exec and the approximated ones: simple)
    remain_after_exit: bool = False
    restart: str = "no"
    restart_sec: float = DEFAULT_RESTART_SEC
    timeout_start: float | None = DEFAULT_TIMEOUT
    timeout_stop: float | None = DEFAULT_TIMEOUT
    exec_start_pre: tuple[ExecCommand, ...] = ()
    exec_start: tuple[ExecCommand, ...] = ()
    exec_start_post: tuple[ExecCommand, ...] = ()
    exec_stop: tuple[ExecCommand, ...] = ()
    exec_stop_post: tuple[ExecCommand, ...] = ()
    environment: tuple[tuple[str, str], ...] = ()
    environment_files: tuple[tuple[str, bool], ...] = ()  # (path, optional)
    working_directory: tuple[str, bool] | None = None  # (path, optional)
    success_exit_codes: frozenset[int] = frozenset({0})
    success_signals: frozenset[int] = frozenset()
    requires: tuple[str, ...] = ()
    binds_to: tuple[str, ...] = ()
    wants: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    before: tuple[str, ...] = ()
    start_limit_burst: int = DEFAULT_START_LIMIT_BURST
    start_limit_interval: float = DEFAULT_START_LIMIT_INTERVAL
    warnings: tuple[str, ...] = ()
    unsupported_reason: str = ""

    def pulls_in(self) -> tuple[str, ...]:
        """Units a start of this one starts too (and, for ordering, waits for)."""
        return tuple(dict.fromkeys(self.requires + self.binds_to + self.wants))

    def is_clean_exit(self, code: int | None, sig: int | None) -> bool:
        if code is not None:
            return code in self.success_exit_codes
        if sig in self.success_signals:
            return True
        return self.type != "oneshot" and sig in _CLEAN_SIGNALS

    def restarts_after(self, result: str) -> bool:
        """systemd's Restart= table; `result` is success, exit-code, signal, timeout, ..."""
        if result in ("start-limit-hit", "dependency"):
            return False
        if self.restart == "always":
            return True
        if self.restart == "on-success":
            return result == "success"
        if self.restart == "on-failure":
            return result != "success"
        if self.restart == "on-abnormal":
            return result in ("signal", "core-dump", "timeout", "watchdog")
        if self.restart == "on-abort":
            return result in ("signal", "core-dump")
        if self.restart == "on-watchdog":
            return result == "watchdog"
        return False


def parse_service_config(unit: UnitFile, name: UnitName,
                         context: SpecifierContext) -> ServiceConfig:
    """Read `unit` as it runs under `name`; raises ConfigError for what systemd refuses."""
    return _Reader(unit, name, context).read()


class _Reader:
    def __init__(self, unit: UnitFile, name: UnitName, context: SpecifierContext) -> None:
        self.unit = unit
        self.name = name
        self.table = specifier_table(name, context)
        self.warnings: list[str] = []

    def expand(self, setting: str, value: str) -> str:
        try:
            return expand_specifiers(value, self.table)
        except ExpansionError as err:
            raise ConfigError(f"{setting}={value}: {err}") from None

    def last(self, section: str, setting: str) -> str | None:
        return self.unit.get_last(section, setting)

    def read(self) -> ServiceConfig:
        description = self.expand("Description", self.last("Unit", "Description") or "") \
            or self.name.full
        common = dict(
            description=description,
            requires=self.names("Requires"), binds_to=self.names("BindsTo"),
            wants=self.names("Wants"), after=self.names("After"), before=self.names("Before"),
            start_limit_burst=self.start_limit_burst(),
            start_limit_interval=self.start_limit_interval(),
        )
        if self.name.is_template:
            return ServiceConfig(kind="unsupported", unsupported_reason=(
                f"{self.name.full} is a template; start an instance such as "
                f"{self.name.prefix}@1.{self.name.suffix}"), **common)
        if self.name.suffix == "target":
            return ServiceConfig(kind="target", warnings=tuple(self.warnings), **common)
        if self.name.suffix != "service":
            return ServiceConfig(kind="unsupported", unsupported_reason=(
                f"unit type .{self.name.suffix} is not supported by the process runner (it "
                "runs .service and .target units)"), **common)
        return self.service(common)

    def service(self, common: dict) -> ServiceConfig:
        kind = self.service_type()
        commands = {setting: self.exec_commands(setting) for setting in EXEC_SETTINGS}
        start = commands["ExecStart"]
        if kind != "oneshot" and not start:
            raise ConfigError("Service has no ExecStart= setting, which is only allowed for "
                              "Type=oneshot services. Refusing.")
        if kind == "oneshot" and not start and not commands["ExecStop"]:
            raise ConfigError("Service has no ExecStart= and no ExecStop= setting. Refusing.")
        if kind != "oneshot" and len(start) > 1:
            raise ConfigError("Service has more than one ExecStart= setting, which is only "
                              "allowed for Type=oneshot services. Refusing.")
        timeout_start, timeout_stop = self.timeouts(kind)
        codes, signals = self.success_status()
        return ServiceConfig(
            kind="service", type=kind,
            remain_after_exit=self.boolean("RemainAfterExit", False),
            restart=self.restart(), restart_sec=self.span("RestartSec", DEFAULT_RESTART_SEC)
            or 0.0,
            timeout_start=timeout_start, timeout_stop=timeout_stop,
            exec_start_pre=commands["ExecStartPre"], exec_start=start,
            exec_start_post=commands["ExecStartPost"], exec_stop=commands["ExecStop"],
            exec_stop_post=commands["ExecStopPost"],
            environment=self.environment(), environment_files=self.environment_files(),
            working_directory=self.working_directory(),
            success_exit_codes=codes, success_signals=signals,
            warnings=tuple(self.warnings), **common)

    def names(self, setting: str) -> tuple[str, ...]:
        found: list[str] = []
        for value in self.unit.get("Unit", setting):
            if not value:
                found.clear()
                continue
            found.extend(self.expand(setting, value).split())
        return tuple(dict.fromkeys(found))

    def service_type(self) -> str:
        value = self.last("Service", "Type") or "simple"
        if value in ("simple", "exec"):
            return "simple"
        if value in ("oneshot", "forking"):
            return value
        if value in APPROXIMATED_TYPES:
            self.warnings.append(f"Type={value} is treated as Type=simple by the process runner "
                                 "(the unit counts as started once its process runs)")
        else:
            self.warnings.append(f"unknown Type={value}; using simple (known: "
                                 f"{', '.join(SUPPORTED_TYPES)})")
        return "simple"

    def exec_commands(self, setting: str) -> tuple[ExecCommand, ...]:
        commands: list[ExecCommand] = []
        for value in self.unit.get("Service", setting):
            if not value:
                commands.clear()  # an empty assignment resets the list, as in systemd
                continue
            commands.append(self.exec_command(setting, value))
        return tuple(commands)

    def exec_command(self, setting: str, value: str) -> ExecCommand:
        expanded = self.expand(setting, value)
        try:
            words = split_command_line(expanded)
        except UnitFileError as err:
            raise ConfigError(f"{setting}={value}: {err}") from None
        if not words:
            raise ConfigError(f"{setting}={value}: no command given")
        head = words[0]
        flags = set()
        while head and head[0] in "-@:+!":
            flags.add(head[0])
            head = head[1:]
        if head:
            words[0] = head
        else:
            words.pop(0)
        if not words or ("@" in flags and len(words) < 2):
            raise ConfigError(f"{setting}={value}: the executable (or, with '@', argv[0]) is "
                              "missing")
        return ExecCommand(setting, value, tuple(words), ignore_failure="-" in flags,
                           separate_argv0="@" in flags, expand_env=":" not in flags)

    def boolean(self, setting: str, default: bool) -> bool:
        value = self.last("Service", setting)
        if value is None:
            return default
        try:
            return parse_boolean(value)
        except ValueError as err:
            self.warnings.append(f"{setting}=: {err}; using {'yes' if default else 'no'}")
            return default

    def restart(self) -> str:
        value = self.last("Service", "Restart") or "no"
        if value in RESTART_POLICIES:
            return value
        self.warnings.append(f"unknown Restart={value}; using no (known: "
                             f"{', '.join(RESTART_POLICIES)})")
        return "no"

    def span(self, setting: str, default: float | None, section: str = "Service",
             ) -> float | None:
        value = self.last(section, setting)
        if value is None:
            return default
        try:
            seconds = parse_timespan(value)
        except ValueError as err:
            self.warnings.append(f"{setting}=: {err}; using the default")
            return default
        return seconds

    def timeouts(self, kind: str) -> tuple[float | None, float | None]:
        both = self.span("TimeoutSec", DEFAULT_TIMEOUT)
        start_default = None if kind == "oneshot" and self.last("Service", "TimeoutSec") is None \
            else both
        start = self.span("TimeoutStartSec", start_default)
        stop = self.span("TimeoutStopSec", both)
        # 0 means "no timeout" in systemd, as does infinity.
        return (start or None), (stop or None)

    def success_status(self) -> tuple[frozenset[int], frozenset[int]]:
        codes = {0}
        signals: set[int] = set()
        for value in self.unit.get("Service", "SuccessExitStatus"):
            for word in value.split():
                if word.isdigit() and int(word) < 256:
                    codes.add(int(word))
                    continue
                signame = word if word.startswith("SIG") else "SIG" + word
                try:
                    signals.add(signal.Signals[signame].value)
                except KeyError:
                    self.warnings.append(f"SuccessExitStatus=: {word!r} is neither an exit code "
                                         "(0-255) nor a signal name; ignoring it")
        return frozenset(codes), frozenset(signals)

    def environment(self) -> tuple[tuple[str, str], ...]:
        pairs: list[tuple[str, str]] = []
        for value in self.unit.get("Service", "Environment"):
            if not value:
                pairs.clear()
                continue
            found, warnings = parse_environment_words(self.expand("Environment", value))
            pairs.extend(found)
            self.warnings.extend(warnings)
        return tuple(pairs)

    def environment_files(self) -> tuple[tuple[str, bool], ...]:
        files: list[tuple[str, bool]] = []
        for value in self.unit.get("Service", "EnvironmentFile"):
            if not value:
                files.clear()
                continue
            path = self.expand("EnvironmentFile", value)
            optional = path.startswith("-")
            path = path[1:] if optional else path
            if not path.startswith("/"):
                raise ConfigError(f"EnvironmentFile={value}: the path must be absolute")
            files.append((path, optional))
        return tuple(files)

    def working_directory(self) -> tuple[str, bool] | None:
        value = self.last("Service", "WorkingDirectory")
        if not value:
            return None
        path = self.expand("WorkingDirectory", value)
        optional = path.startswith("-")
        path = path[1:] if optional else path
        if not (path.startswith("/") or path == "~"):
            raise ConfigError(f"WorkingDirectory={value}: the path must be absolute (or ~)")
        return path, optional

    def start_limit_burst(self) -> int:
        value = self.last("Unit", "StartLimitBurst") or self.last("Service", "StartLimitBurst")
        if value is None:
            return DEFAULT_START_LIMIT_BURST
        if value.strip().isdigit():
            return int(value)
        self.warnings.append(f"StartLimitBurst={value} is not a number; using "
                             f"{DEFAULT_START_LIMIT_BURST}")
        return DEFAULT_START_LIMIT_BURST

    def start_limit_interval(self) -> float:
        for section, setting in (("Unit", "StartLimitIntervalSec"),
                                 ("Service", "StartLimitInterval")):
            if self.last(section, setting) is not None:
                return self.span(setting, DEFAULT_START_LIMIT_INTERVAL, section) or 0.0
        return DEFAULT_START_LIMIT_INTERVAL
