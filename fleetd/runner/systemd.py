"""The systemd runner: fleetd's agent hands its units to systemd over D-Bus (pydbus).

As fleet did: a unit's file is written into the units directory (fleet's
`units_directory`, default /run/fleet/units), linked into systemd for this boot only
(`LinkUnitFiles(runtime)`), `Reload`ed, then started and stopped by name (`StartUnit`
/ `StopUnit`, mode `replace`); unload stops it, unlinks it and removes the file.
One `Reload` serves every load and unload before it: it is issued when something next
needs systemd's view of the files (a start or stop, a state read, the slow refresh), so
an agent loading 500 units reloads once instead of 500 times (~0.1 s each).
Template instances are written under their instance names (`web@1.service`), so each
instance carries its own content.

States come from systemd itself: one `ListUnitsByNames` call reads every known unit
(fleet-scaling.md: agents burned CPU on D-Bus at ~500 units; bench/systemd_states.py
measures one call for 500 units at 0.026 s against 0.85 s for one GetAll per unit), and
`PropertiesChanged` signals on the units' objects, handled on a GLib main loop thread,
report changes as they happen; a slow full read catches anything a signal did not say.

Units survive fleetd: `shutdown` leaves them running (a restarted fleetd adopts them:
`adopt` reports what the units directory holds, so the agent neither reloads nor
restarts them). Logs are journald's (`journalctl -u`).

pydbus needs PyGObject (`pip install ".[systemd]"`); it is imported only here.
"""

from __future__ import annotations

import datetime
import logging
import os
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from fleetd.runner.base import RunnerError, StateListener, UnitStatus
from fleetd.unit.unitfile import UnitFile, content_hash, parse_unit_file, serialize

log = logging.getLogger("fleetd.runner.systemd")

SYSTEMD = "org.freedesktop.systemd1"
SYSTEMD_PATH = "/org/freedesktop/systemd1"
UNIT_IFACE = "org.freedesktop.systemd1.Unit"
DEFAULT_UNITS_DIR = Path("/run/fleet/units")
SYSTEM_BUS_SOCKET = "/run/dbus/system_bus_socket"
REFRESH_S = 10.0  # the slow full read behind the signals

JournalCommand = Callable[[str, int, bool], Sequence[str]]


def system_bus_address() -> str:
    return os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or f"unix:path={SYSTEM_BUS_SOCKET}"


def system_bus_present(address: str | None = None) -> bool:
    """Cheap check (no D-Bus traffic) that a system bus socket exists to try."""
    address = address or system_bus_address()
    for part in address.split(";"):
        if part.startswith("unix:path="):
            return Path(part[len("unix:path="):].split(",")[0]).exists()
        if part.startswith("unix:abstract="):
            return True
    return False


def connect_systemd(address: str | None = None):  # pydbus proxies
    """(bus, systemd's manager object) on the system bus at `address` (default: this
    host's); RunnerError saying what is missing or what failed."""
    try:
        from pydbus import connect
    except ImportError as err:
        raise RunnerError("talking to systemd needs pydbus and PyGObject: pip install "
                          "'.[systemd]' (Debian: python3-pydbus)") from err
    address = address or system_bus_address()
    try:
        bus = connect(address)
        return bus, bus.get(SYSTEMD, SYSTEMD_PATH)
    except Exception as err:  # GLib.Error and friends: say what failed
        raise RunnerError(f"cannot reach systemd on the system bus ({address}): "
                          f"{dbus_message(err)}") from None


def journal_command_for(root: Path | None = None) -> JournalCommand:
    """`journalctl -u` of this host, or of the system whose files are under `root`."""
    def command(unit: str, lines: int, follow: bool) -> list[str]:
        argv = ["journalctl", *(["--root", str(root)] if root else []), "--no-pager",
                "--output", "short-iso", "--unit", unit, "--lines", str(lines)]
        return argv + ["--follow"] if follow else argv
    return command


default_journal_command = journal_command_for()


class SystemdRunner:
    """`Runner` over systemd's D-Bus API (see the module docstring)."""

    keeps_units_on_shutdown = True

    def __init__(self, units_dir: Path | str = DEFAULT_UNITS_DIR, *,
                 bus_address: str | None = None,
                 journal_command: JournalCommand = default_journal_command) -> None:
        try:
            import pydbus  # noqa: F401 - present, or the clear error below
            from gi.repository import GLib
        except ImportError as err:
            raise RunnerError("the systemd runner needs pydbus and PyGObject: "
                              "pip install '.[systemd]' (or use runner=process)") from err
        self.units_dir = Path(units_dir)
        self.bus_address = bus_address or system_bus_address()
        self.journal_command = journal_command
        try:
            self.units_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunnerError(f"cannot create the units directory {self.units_dir}: "
                              f"{err.strerror or err}") from None
        self.bus, self.manager = connect_systemd(self.bus_address)
        try:
            self.manager.Subscribe()
        except Exception as err:  # GLib.Error and friends: say what failed
            raise RunnerError(f"cannot reach systemd on the system bus "
                              f"({self.bus_address}): {dbus_message(err)}") from None
        self._lock = threading.Lock()
        self._reload_lock = threading.Lock()    # one Reload at a time; readers wait for it
        self._unreloaded: set[str] = set()      # units whose files changed since the last Reload
        self._known: dict[str, str] = {}        # unit -> content hash written
        self._paths: dict[str, str] = {}        # object path -> unit
        self._states: dict[str, UnitStatus] = {}
        self._listeners: list[StateListener] = []
        self._closing = threading.Event()
        self._adopt_existing()
        self._loop = GLib.MainLoop()
        self._subscription = self.bus.subscribe(
            sender=SYSTEMD, iface="org.freedesktop.DBus.Properties",
            signal="PropertiesChanged", signal_fired=self._on_properties_changed)
        self._loop_thread = threading.Thread(target=self._loop.run, name="systemd-signals",
                                             daemon=True)
        self._loop_thread.start()
        self._refresher = threading.Thread(target=self._refresh_loop, name="systemd-refresh",
                                           daemon=True)
        self._refresher.start()

    # -- Runner -----------------------------------------------------------------------------

    def load(self, name: str, unit: UnitFile) -> None:
        digest = content_hash(unit)
        path = self.units_dir / name
        with self._lock:
            if self._known.get(name) == digest and path.is_file():
                return
        staged = path.with_name(f".{name}.tmp")
        try:
            staged.write_text(serialize(unit))
            os.replace(staged, path)
        except OSError as err:
            raise RunnerError(f"cannot write {path}: {err.strerror or err}") from None
        self._call(f"link {name}", self.manager.LinkUnitFiles, [str(path)], True, True)
        with self._lock:
            self._known[name] = digest
            self._unreloaded.add(name)
        self._track(name)

    def unload(self, name: str) -> None:
        with self._lock:
            known = name in self._known
        if not known and not (self.units_dir / name).exists():
            return
        try:
            self.manager.StopUnit(name, "replace")
        except Exception as err:  # GLib.Error: only "not loaded" is fine
            if "NoSuchUnit" not in str(err) and "not loaded" not in str(err):
                # Forgetting a unit systemd refused to stop would leave it running here
                # while the engine starts it elsewhere.
                raise RunnerError(f"systemd could not stop {name}: "
                                  f"{dbus_message(err)}") from None
        try:
            self.manager.DisableUnitFiles([name], True)
        except Exception as err:  # not linked: nothing to unlink
            log.debug("unlink %s: %s", name, dbus_message(err))
        (self.units_dir / name).unlink(missing_ok=True)
        with self._lock:
            self._known.pop(name, None)
            self._unreloaded.add(name)

    def start(self, name: str) -> None:
        self._reload_if_needed()
        self._call(f"start {name}", self.manager.StartUnit, name, "replace")

    def stop(self, name: str) -> None:
        self._reload_if_needed()
        self._call(f"stop {name}", self.manager.StopUnit, name, "replace")

    def units(self) -> dict[str, UnitStatus]:
        with self._lock:
            names = list(self._known)
        return self._read(names)

    def adopt(self) -> dict[str, str]:
        """The units found in the units directory at start: name -> content hash."""
        with self._lock:
            return dict(self._known)

    def subscribe(self, listener: StateListener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def status_text(self, name: str) -> str:
        self._reload_if_needed()
        try:
            unit = self.bus.get(SYSTEMD, self.manager.LoadUnit(name))
            lines = [f"● {name} - {unit.Description}",
                     f"   Loaded: {unit.LoadState} ({unit.FragmentPath or '-'}; "
                     f"{unit.UnitFileState or 'linked-runtime'})",
                     f"   Active: {unit.ActiveState} ({unit.SubState})"
                     f"{_since(unit.StateChangeTimestamp)}"]
            if name.endswith(".service"):
                pid = self.bus.get(SYSTEMD, self.manager.LoadUnit(name))[
                    "org.freedesktop.systemd1.Service"].MainPID
                if pid:
                    lines.append(f" Main PID: {pid}")
        except Exception as err:  # report, do not raise, for status
            raise RunnerError(f"cannot read {name} from systemd: {dbus_message(err)}") from None
        return "\n".join(lines) + "\n"

    def journal(self, name: str, lines: int = 10, follow: bool = False) -> Iterator[str]:
        argv = list(self.journal_command(name, lines, follow))
        try:
            process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, text=True, errors="replace")
        except OSError as err:
            raise RunnerError(f"cannot run {argv[0]}: {err.strerror or err}") from None
        try:
            assert process.stdout is not None
            for line in process.stdout:
                if line.startswith("-- ") and "--" in line[3:]:
                    continue  # journalctl's "-- No entries --"/"-- Logs begin" banners
                yield line
        finally:
            if process.poll() is None:
                process.terminate()
                process.wait(5)

    def shutdown(self) -> None:
        """Release the bus; the units keep running (a restarted fleetd adopts them)."""
        self._closing.set()
        try:
            self._subscription.unsubscribe()
        except Exception:  # the connection may be gone already
            pass
        self._loop.quit()
        self._loop_thread.join(5)
        self._refresher.join(5)

    # -- internals --------------------------------------------------------------------------

    def _adopt_existing(self) -> None:
        for path in sorted(self.units_dir.iterdir()):
            if path.name.startswith(".") or not path.is_file():
                continue
            try:
                self._known[path.name] = content_hash(parse_unit_file(path.read_text()))
            except (OSError, ValueError) as err:
                log.warning("ignoring %s in the units directory: %s", path, err)
                continue
            self._track(path.name)
        if self._known:
            self._states = self._read(list(self._known))

    def _track(self, name: str) -> None:
        try:
            path = self.manager.LoadUnit(name)
        except Exception as err:  # states still come from the full reads
            log.debug("LoadUnit %s: %s", name, dbus_message(err))
            return
        with self._lock:
            self._paths[str(path)] = name

    def _reload_if_needed(self) -> None:
        """Issue the one `Reload` that the loads and unloads since the last one wait for,
        then report the states of the units it changed."""
        with self._reload_lock:
            with self._lock:
                changed, self._unreloaded = self._unreloaded, set()
            if not changed:
                return
            try:
                self._call("reload systemd", self.manager.Reload)
            except RunnerError:
                with self._lock:
                    self._unreloaded |= changed  # the next caller tries again
                raise
        self._refresh(sorted(changed))

    def _read(self, names: list[str], reload: bool = True) -> dict[str, UnitStatus]:
        if reload:
            self._reload_if_needed()
        if not names:
            return {}
        found = self._call("read unit states", self.manager.ListUnitsByNames, names)
        states = {row[0]: UnitStatus(row[2], row[3], row[4]) for row in found}
        return {n: states.get(n, UnitStatus()) for n in names}

    def _refresh(self, names: list[str], reload: bool = True) -> None:
        try:
            fresh = self._read(names, reload)
        except RunnerError as err:
            log.warning("%s", err)
            return
        changed = []
        with self._lock:
            for name, status in fresh.items():
                if name not in self._known and status.load == "not-found":
                    self._states.pop(name, None)
                    continue
                if self._states.get(name) != status:
                    self._states[name] = status
                    changed.append((name, status))
            listeners = list(self._listeners)
        for name, status in changed:
            for listener in listeners:
                listener(name, status)

    def _on_properties_changed(self, sender, path, iface, signal, params) -> None:
        interface = params[0] if params else ""
        if interface != UNIT_IFACE:
            return
        with self._lock:
            name = self._paths.get(str(path))
        if name is not None:
            # No Reload for a signal: each stop of a batch of unloads would force one.
            self._refresh([name], reload=False)

    def _refresh_loop(self) -> None:
        while not self._closing.wait(REFRESH_S):
            with self._lock:
                names = list(self._known)
            self._refresh(names)

    def _call(self, what: str, method: Callable, *args: object):
        try:
            return method(*args)
        except Exception as err:  # GLib.Error: turn into a clear RunnerError
            raise RunnerError(f"systemd could not {what}: {dbus_message(err)}") from None


def dbus_message(err: BaseException) -> str:
    text = str(err)
    # GLib.Error texts look like "g-dbus-error-quark: GDBus.Error:org...: message (36)".
    if "GDBus.Error:" in text:
        text = text.split("GDBus.Error:", 1)[1]
    return text.strip()


def _since(usec: int) -> str:
    if not usec:
        return ""
    when = datetime.datetime.fromtimestamp(usec / 1_000_000, tz=datetime.timezone.utc)
    ago = (datetime.datetime.now(datetime.timezone.utc) - when).total_seconds()
    return f" since {when:%a %Y-%m-%d %H:%M:%S %Z}; {int(max(0, ago))}s ago"
