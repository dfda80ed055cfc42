"""`fleetd announce` against a real etcd and a real service on loopback: the key exists only
while the check passes, goes at once when it fails or the announcer stops."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid

import pytest

from fleetd.announce.checks import http_check, tcp_check
from fleetd.cli import main as fleetd_main
from fleetd.machine import Machine
from fleetd.registry.etcd import Etcd
from fleetd.registry.keys import Keys
from tests.support.etcd import free_port, wait_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Service:
    """An HTTP server on 127.0.0.1 that can be told to answer 500 or to go away."""

    def __init__(self) -> None:
        self.status = 200
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(owner.status)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def service():
    running = Service()
    yield running
    running.close()


@pytest.fixture
def fleet(etcd_server):
    """A registered machine record, as fleetd writes it, under a fresh prefix."""
    etcd = Etcd([etcd_server.url], timeout=3)
    prefix = f"/announce-{uuid.uuid4().hex[:8]}/"
    machine = uuid.uuid4().hex
    etcd.put(Keys(prefix).machine(machine),
             json.dumps(Machine(machine, "127.0.0.1").to_json()))
    yield etcd, prefix, machine
    etcd.close()


def test_checks(service):
    assert http_check("127.0.0.1", service.port, "/", 1.0)
    assert tcp_check("127.0.0.1", service.port, 1.0)
    service.status = 503
    assert not http_check("127.0.0.1", service.port, "/", 1.0)
    closed = free_port()
    assert not tcp_check("127.0.0.1", closed, 1.0)
    assert not http_check("127.0.0.1", closed, "/", 1.0)


def start(etcd_server, prefix: str, machine: str, port: int, key: str,
          check: str = "http") -> subprocess.Popen:
    argv = [sys.executable, "-m", "fleetd.cli", "announce", "--unit", "web@1.service",
            "--key", key, "--port", str(port), "--check", check, "--ttl", "3",
            "--interval", "0.2", "--etcd-servers", etcd_server.url, "--etcd-key-prefix", prefix,
            "--machine", machine, "--host", "core-01"]
    return subprocess.Popen(argv, env={**os.environ, "PYTHONPATH": REPO},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_announces_only_while_healthy_and_withdraws_on_stop(etcd_server, fleet, service):
    etcd, prefix, machine = fleet
    key = f"{prefix}services/web/1"
    process = start(etcd_server, prefix, machine, service.port, key)
    try:
        kv = wait_for(lambda: etcd.get(key), 10, message="announced")
        assert json.loads(kv.value) == {"host": "core-01", "ip": "127.0.0.1", "machine": machine,
                                        "port": service.port, "unit": "web@1.service"}
        assert kv.lease  # bound to a lease: a dead announcer's key expires by itself

        service.status = 500  # unhealthy: withdrawn at once, not after the TTL
        wait_for(lambda: etcd.get(key) is None, 2, message="withdrawn on a failed check")
        service.status = 200
        wait_for(lambda: etcd.get(key), 5, message="announced again")

        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        assert etcd.get(key) is None
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_service_that_never_answers_is_never_announced(etcd_server, fleet):
    """A service that accepts connections and never answers: the announcer keeps checking it
    and never announces it. Watched until it has checked three times (rounds, not a time:
    a loaded machine may take seconds just to start the announcer)."""
    etcd, prefix, machine = fleet
    key = f"{prefix}services/web/2"
    silent = socket.create_server(("127.0.0.1", 0))
    checks: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                checks.append(silent.accept()[0])  # held open, never answered
            except OSError:
                return
    threading.Thread(target=accept, daemon=True).start()
    process = start(etcd_server, prefix, machine, silent.getsockname()[1], key)
    seen = []
    try:
        events, cancel = etcd.client.watch_prefix(key)

        def end_watch() -> None:
            try:
                wait_for(lambda: len(checks) >= 3, 60, message="three checks of the service")
            except TimeoutError:
                pass  # asserted below
            finally:
                cancel()
        threading.Thread(target=end_watch, daemon=True).start()
        for event in events:
            seen.append(event)
        assert len(checks) >= 3, "the announcer checked the service three times"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        silent.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread, which ends
        silent.close()
        for held in checks:
            held.close()
    assert seen == [] and etcd.get(key) is None


@pytest.mark.parametrize("argv,message", [
    (["--key", "/k", "--port", "80", "--etcd-servers", "x", "--machine", "m"], "--unit"),
    (["--unit", "a.service", "--key", "/k", "--port", "70000", "--etcd-servers", "x",
      "--machine", "m"], "not a TCP port"),
    (["--unit", "a.service", "--key", "k", "--port", "80", "--etcd-servers", "x",
      "--machine", "m"], "absolute etcd key"),
    (["--unit", "a.service", "--key", "/k", "--port", "80", "--ttl", "0",
      "--etcd-servers", "x", "--machine", "m"], "1 or more"),
])
def test_bad_arguments_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exited:
        code = fleetd_main(["announce", *argv])
        raise SystemExit(code)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
