"""Wiring only: build the registry, runner, API, agent and engine from a Config and run them."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from pathlib import Path

from fleetd.agent.agent import Agent
from fleetd.api import Api, ApiServer
from fleetd.api.server import FD_RESERVE, Limits, raise_open_files_limit
from fleetd.config import Config, api_address_problem, etcd_tls, parse_listen_address
from fleetd.engine.engine import Engine
from fleetd.machine import Machine
from fleetd.registry.etcd import Etcd
from fleetd.registry.registry import Registry
from fleetd.registry.view import UnitsView
from fleetd.runner.base import Runner, RunnerError

log = logging.getLogger("fleetd")
VERSION = "0.1.0"


SYSTEM_MACHINE_ID = Path("/etc/machine-id")


def machine_id(state_dir: Path, system_id_file: Path | None = None) -> str:
    """This machine's id. With `system_id_file` (/etc/machine-id, when fleetd drives the
    systemd of the machine it runs on), systemd's id, as fleet uses it: a unit's `%m` then
    names its fleet machine (a sidekick looks its machine up by it). Otherwise, or when
    that file holds no id, read from `state_dir/machine-id`, made and kept on first start
    (local nodes share one host, so each needs its own)."""
    if system_id_file is not None:
        try:
            system = system_id_file.read_text().strip()
        except OSError:
            system = ""
        if len(system) == 32 and all(c in "0123456789abcdef" for c in system):
            return system
    path = state_dir / "machine-id"
    try:
        existing = path.read_text().strip()
    except FileNotFoundError:
        existing = ""
    if len(existing) == 32 and all(c in "0123456789abcdef" for c in existing):
        return existing
    new = uuid.uuid4().hex
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text(new + "\n")
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a full disk must not leave a torn id behind
        raise
    return new


def default_public_ip() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def node_hostname(root_dir: Path | None) -> str:
    """The node's own name (its root's /etc/hostname, as on a booted machine) for %H and
    journal lines; this host's name when fleetd runs on the host itself."""
    if root_dir is not None:
        try:
            name = (Path(root_dir) / "etc" / "hostname").read_text().strip()
        except (OSError, UnicodeDecodeError):
            name = ""
        if name:
            return name
    return socket.gethostname()


def runner_kind(config: Config) -> str:
    """`process` or `systemd`: what `runner = auto` means here (a local node, with a root
    directory standing for `/`, always runs processes)."""
    if config.runner != "auto":
        return config.runner
    if config.root_dir is not None:
        return "process"
    from fleetd.runner.systemd import system_bus_present

    if not system_bus_present():
        return "process"
    try:
        import pydbus  # noqa: F401 - only whether it can be imported
    except ImportError:
        log.warning("a system bus is present but pydbus is not installed: running units "
                    "as processes (pip install '.[systemd]' for the systemd runner)")
        return "process"
    return "systemd"


def make_runner(config: Config, machine: str) -> Runner:
    """The runner the configuration asks for; RunnerError when it cannot work here."""
    if runner_kind(config) == "systemd":
        from fleetd.runner.systemd import SystemdRunner, journal_command_for

        if config.root_dir is not None:
            raise RunnerError("runner=systemd cannot use root_dir (a local node's processes "
                              "are not systemd's); use runner=process")
        return SystemdRunner(config.units_directory,
                             journal_command=journal_command_for(config.journal_root))
    from fleetd.runner.process import ProcessRunner

    return ProcessRunner(config.state_dir, machine, node_hostname(config.root_dir),
                         root_dir=config.root_dir)


class Server:
    def __init__(self, config: Config) -> None:
        problem = api_address_problem(config)
        if problem is not None:
            raise ValueError(f"api_address: {problem}")
        self.config = config
        config.state_dir.mkdir(parents=True, exist_ok=True)
        # This machine's own systemd (not one reached through another bus): its id.
        own_systemd = (runner_kind(config) == "systemd"
                       and not os.environ.get("DBUS_SYSTEM_BUS_ADDRESS"))
        mid = machine_id(config.state_dir, SYSTEM_MACHINE_ID if own_systemd else None)
        self.etcd = Etcd(config.etcd_servers, timeout=config.etcd_request_timeout,
                         tls=etcd_tls(config))
        self.registry = Registry(self.etcd, config.etcd_key_prefix)
        ttl = max(1, round(config.agent_ttl))
        self.runner = make_runner(config, mid)
        # Each API connection is a file descriptor: make room for the API's whole limit
        # (a soft limit of 1024 is common) before the API sizes itself by what it got.
        raise_open_files_limit(Limits().connections + FD_RESERVE)
        # Bound now (served from start()) so the machine record carries the API's real URL.
        self.view = UnitsView(self.registry)
        try:
            self.api = ApiServer(Api(self.registry, self.runner, mid, view=self.view),
                                 config.api_socket_path,
                                 parse_listen_address(config.api_address)
                                 if config.api_address else None)
        except BaseException:
            self.runner.shutdown()
            self.etcd.close()
            raise
        public_ip = config.public_ip or default_public_ip()
        self.machine = Machine(id=mid, public_ip=public_ip, metadata=dict(config.metadata),
                               api_url=self.api.url(public_ip), version=VERSION)
        self.agent = Agent(self.registry, self.runner, self.machine, ttl)
        self.engine = None if config.disable_engine else Engine(
            self.registry, mid, ttl, config.engine_reconcile_interval)
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        self.api.start()  # the units view starts with the API's first read
        self.threads.append(threading.Thread(target=self.agent.run, args=(self.stop,),
                                             name="agent", daemon=True))
        if self.engine is not None:
            self.threads.append(threading.Thread(target=self.engine.run, args=(self.stop,),
                                                 name="engine", daemon=True))
        for thread in self.threads:
            thread.start()
        log.info("fleetd %s started: machine %s, etcd %s", VERSION, self.machine.id,
                 ",".join(self.config.etcd_servers))

    def shutdown(self, timeout: float = 30.0) -> None:
        # Stop first: while the API closes, a standby engine of a cluster going down would
        # otherwise still campaign, and win (loading every job) as the others resign.
        self.stop.set()
        self.agent.wake()
        if self.engine is not None:
            self.engine.wake()
        self.api.close()
        for thread in self.threads:
            thread.join(timeout)
        self.view.close()
        self.etcd.close()
