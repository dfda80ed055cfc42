"""An etcd that cannot be reached is one line wherever it surfaces: the registry's error,
fleetctl through fleet's API (503), and the `fleetd announce` sidekick's log. A gRPC
error's repr spans several lines and repeats itself; users saw a ~37-line dump from one
`provision apply` whose cluster had gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from fleetd.registry.etcd import MIN_ATTEMPT_S, Etcd, RegistryUnavailable
from tests.support.etcd import EtcdServer, free_port, wait_for
from tests.support.fleet import REPO, FleetHarness

GRPC_NOISE = ("debug_error_string", "_InactiveRpcError", "StatusCode.", "<")


def one_line(text: str) -> str:
    assert "\n" not in text.strip(), text
    assert not any(noise in text for noise in GRPC_NOISE), text
    return text


@pytest.fixture(scope="module")
def etcd():
    server = EtcdServer().start()
    yield server
    server.stop()


def test_a_refused_etcd_is_one_line():
    client = Etcd([f"http://127.0.0.1:{free_port()}"], timeout=1)
    try:
        for read in (lambda: client.get("/x"), lambda: client.snapshot("/x/")):  # 2 paths
            with pytest.raises(RegistryUnavailable) as failed:
                read()
            assert one_line(str(failed.value)).startswith("etcd unreachable: ")
    finally:
        client.close()


def test_a_retry_never_outlasts_the_deadline():
    """Each attempt may last only what is left of the caller's deadline: after fast
    failures (an endpoint marked failed answers at once), a last attempt given a whole
    timeout of its own kept an API request from answering 503 for up to twice the etcd
    timeout, past what clients wait."""
    client = Etcd([f"http://127.0.0.1:{free_port()}"], timeout=1.0)
    deadline = time.monotonic() + 1.0
    attempts: list[tuple[float, float]] = []

    def attempt(budget: float) -> None:
        attempts.append((budget, deadline - time.monotonic()))
        if len(attempts) > 2:
            time.sleep(budget)  # a stalled etcd: the attempt lasts as long as it may
        raise ValueError("transient")
    try:
        with pytest.raises(RegistryUnavailable):
            client._call(attempt, budgeted=True)
    finally:
        client.close()
    assert len(attempts) >= 3
    for budget, left in attempts:
        assert budget <= max(MIN_ATTEMPT_S, left) + 0.2, attempts


def test_a_stalled_etcd_is_one_line_and_fleetctl_says_so_in_one_line(etcd, tmp_path):
    harness = FleetHarness(etcd.url, "/unreachable/", tmp_path)
    try:
        node = harness.start("n1")
        socket = node.state_dir / "fleet.sock"
        etcd.pause()
        try:
            client = Etcd([etcd.url], timeout=1)
            try:
                with pytest.raises(RegistryUnavailable) as failed:
                    client.get("/x")
            finally:
                client.close()
            one_line(str(failed.value))
            listed = subprocess.run(
                [sys.executable, "-m", "fleetd.fleetctl.main", "--endpoint",
                 f"unix://{socket}", "list-units"], capture_output=True, text=True,
                timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
        finally:
            etcd.resume()
    finally:
        harness.close()
    assert listed.returncode == 1, listed
    assert "503" in one_line(listed.stderr) and "etcd" in listed.stderr


def test_the_announce_sidekick_logs_an_unreachable_etcd_in_one_line():
    announcer = subprocess.Popen(
        [sys.executable, "-m", "fleetd.cli", "announce", "--unit", "web@1.service",
         "--key", "/services/web/1", "--port", "9", "--interval", "0.2",
         "--etcd-servers", f"http://127.0.0.1:{free_port()}", "--machine", "m1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    lines: list[str] = []
    try:
        assert announcer.stderr is not None
        wait_for(lambda: lines.append(announcer.stderr.readline()) or len(lines) >= 2, 60,
                 message="two log lines")
    finally:
        announcer.send_signal(signal.SIGTERM)
        rest = announcer.communicate(timeout=30)[1]
    for line in [*lines, *rest.splitlines()]:
        if line.strip():
            assert line.startswith("fleetd.announce: etcd unreachable: "), line
            one_line(line)
