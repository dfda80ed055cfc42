"""The API cannot starve its machine: thousands of idle or half-sent connections never cost
fleetd its lease nor keep other requests from an answer; connections are capped; a request
must arrive within the header and body timeouts; an idle kept-alive connection is closed;
aborted requests leave nothing in the log; followed journals are capped.

The storm runs against a real fleetd process on a real etcd (its own file descriptors, its
own GIL); the limits are checked on an in-process `ApiServer` with small limits.
"""

from __future__ import annotations

import http.client
import json
import logging
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from fleetd.api import Api, ApiServer
from fleetd.api.server import Limits, raise_open_files_limit
from fleetd.registry.etcd import Etcd
from fleetd.registry.registry import Registry
from fleetd.runner.process import ProcessRunner
from fleetd.runner.process.procs import LogLimits, UnitLog
from fleetd.unit.unitfile import parse_unit_file
from tests.support.api_storm import (
    HALF_REQUEST,
    IdleStorm,
    MachineKeyWatch,
    Prober,
    UnixConnection,
)
from tests.support.etcd import free_port, wait_for
from tests.support.fleet import FleetHarness

V1 = "/fleet/v1"
STORM = 3000
TICKER = "[Service]\nExecStart=/bin/sh -c 'while true; do echo tick; sleep 0.1; done'\n"


# -- 3,000 idle connections against a real fleetd -------------------------------------------------
@pytest.fixture
def fleetd(etcd_server):
    if raise_open_files_limit(STORM + 512) < STORM + 512:
        pytest.skip(f"the open-files limit allows fewer than {STORM} connections here")
    base = Path(tempfile.mkdtemp(prefix="flim-"))
    harness = FleetHarness(etcd_server.url, f"/limits-{uuid.uuid4().hex[:8]}/", base, ttl=3)
    try:
        yield harness, harness.start("n1")
    finally:
        harness.close()
        shutil.rmtree(base, ignore_errors=True)


def test_thousands_of_idle_connections_neither_cost_the_lease_nor_block_requests(fleetd):
    harness, node = fleetd
    sock = node.state_dir / "fleet.sock"
    watch = MachineKeyWatch(harness.etcd, harness.registry.keys.machine(node.machine_id))
    prober = Prober(sock, interval=0.1, timeout=30).start()
    storm = IdleStorm(sock, STORM)
    try:
        storm.open()  # half say nothing, half send a request head that never ends
        assert storm.refused == 0, f"{storm.refused} connections could not be made"
        held = prober.once()
        assert held.status == 200, f"list-machines while {STORM} were held: {held}"
        storm.close()  # all at once, as the buggy client did
        after = prober.once()
        assert after.status == 200, f"list-machines after closing them: {after}"
        burst = IdleStorm(sock, STORM).open()  # opened and closed at once, never held
        burst.close()
        # A lease lost meanwhile shows as a delete within one TTL: wait that out.
        settled = time.monotonic() + harness.ttl + 1
        wait_for(lambda: time.monotonic() > settled and prober.once().status == 200,
                 harness.ttl + 30, message="a request answered after the storm")
    finally:
        storm.close()
        prober.stop()
    assert watch.poll() == 0, "the machine key disappeared: the machine lost its lease"
    assert watch.same_registration(), "the machine registered again: its lease had expired"
    watch.close()
    failed = [p for p in prober.probes if p.status != 200]
    assert not failed, f"{len(failed)} of {len(prober.probes)} probes failed: {failed[:3]}"
    log = node.log()
    assert "Traceback" not in log and "Broken pipe" not in log, log[-2000:]


# -- limits, on an in-process server ---------------------------------------------------------------
@pytest.fixture
def serve():
    """Start an ApiServer with the given limits (no etcd behind it: the routes used here
    need none); everything is closed at the end."""
    made: list[tuple[ApiServer, Etcd]] = []
    base = Path(tempfile.mkdtemp(prefix="flim-"))

    def start(runner=None, tcp: bool = False, **limits) -> ApiServer:
        dead = Etcd([f"http://127.0.0.1:{free_port()}"], timeout=0.3)
        server = ApiServer(Api(Registry(dead, "/dead/"), runner, "m"),
                           base / f"api{len(made)}.sock",
                           ("127.0.0.1", 0) if tcp else None, Limits(**limits))
        made.append((server, dead))
        server.start()
        return server

    yield start
    for server, dead in made:
        server.close()
        dead.close()
    shutil.rmtree(base, ignore_errors=True)


def connect(server: ApiServer) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(str(server.socket_path))
    return sock


def closed_without_answer(sock: socket.socket) -> bool:
    """True once the server has closed `sock` having sent nothing on it."""
    try:
        sock.setblocking(False)
        data = sock.recv(65536)
    except BlockingIOError:
        return False
    except OSError:
        return True
    assert data == b"", f"the server answered: {data[:200]!r}"
    return True


def get(server: ApiServer, path: str = f"{V1}/discovery", timeout: float = 30) -> int:
    conn = UnixConnection(server.socket_path, timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


class OpenConnections:
    """The most connections the server held at once, sampled every 5 ms."""

    def __init__(self, server: ApiServer) -> None:
        self.server, self.most = server, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.wait(0.005):
            self.most = max(self.most, self.server.open_connections())

    def close(self) -> int:
        self.stop.set()
        self.thread.join()
        return self.most


def test_connections_over_the_cap_wait_until_silent_ones_are_dropped(serve):
    server = serve(connections=4, header_timeout=1.0)
    sampler = OpenConnections(server)
    silent = [connect(server) for _ in range(4)]
    wait_for(lambda: server.open_connections() == 4, 10, message="4 connections accepted")
    answers: list[int] = []
    waiting = threading.Thread(target=lambda: answers.append(get(server)))
    waiting.start()  # the fifth: it waits in the backlog, it is not refused
    wait_for(lambda: all(closed_without_answer(s) for s in silent), 20,
             message="silent connections closed after the header timeout")
    waiting.join(30)
    assert answers == [200]
    assert sampler.close() == 4, "never more than the cap at once"
    for sock in silent:
        sock.close()


def trickle(sock: socket.socket, head: bytes, drip: bytes, deadline_s: float = 20) -> bool:
    """Send `head`, then `drip` every 0.1 s, until the server closes the connection
    (True) or the deadline passes (False). The client is never idle for long."""
    sock.sendall(head)
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if closed_without_answer(sock):
            return True
        try:
            sock.sendall(drip)
        except OSError:
            return True
        time.sleep(0.1)
    return False


def test_a_request_head_sent_byte_by_byte_is_cut_at_the_header_timeout(serve):
    server = serve(header_timeout=1.0, idle_timeout=60)
    sock = connect(server)
    try:
        assert trickle(sock, b"GET /fleet/v1/discovery HTTP/1.1\r\n", b"X"), \
            "a head trickled for 20 s was never cut"
    finally:
        sock.close()
    assert get(server) == 200


def test_a_body_sent_byte_by_byte_is_cut_at_the_body_timeout(serve):
    server = serve(body_timeout=1.0, idle_timeout=60)
    sock = connect(server)
    try:
        head = (b"PUT /fleet/v1/units/slow.service HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
        assert trickle(sock, head, b" "), "a body trickled for 20 s was never cut"
    finally:
        sock.close()


def test_an_idle_kept_alive_connection_is_closed(serve):
    server = serve(idle_timeout=1.0)
    conn = UnixConnection(server.socket_path, 30)
    try:
        conn.request("GET", f"{V1}/discovery")
        response = conn.getresponse()
        response.read()
        assert response.status == 200 and response.getheader("Connection") != "close"
        wait_for(lambda: closed_without_answer(conn.sock), 20,
                 message="idle keep-alive connection closed")
    finally:
        conn.close()


def test_aborted_requests_are_dropped_quietly(serve, caplog):
    caplog.set_level(logging.DEBUG, logger="fleetd")
    server = serve(tcp=True)
    host, port = server.tcp_address
    for i in range(100):
        unix = connect(server)
        unix.sendall(HALF_REQUEST if i % 2 else
                     b"PUT /fleet/v1/units/a.service HTTP/1.1\r\nContent-Length: 500\r\n\r\n{")
        unix.close()
        tcp = socket.create_connection((host, port), timeout=30)
        tcp.sendall(HALF_REQUEST)
        # close with a reset, as a killed client does
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        tcp.close()
    gone = connect(server)  # a whole request whose client leaves before the answer
    gone.sendall(b"GET /fleet/v1/discovery HTTP/1.1\r\nHost: x\r\n\r\n")
    gone.close()
    assert get(server) == 200
    wait_for(lambda: server.open_connections() == 0, 20, message="every connection closed")
    noisy = [r for r in caplog.records
             if r.levelno >= logging.WARNING or r.exc_info or "Traceback" in r.getMessage()]
    assert not noisy, [r.getMessage() for r in noisy]


def test_followed_journals_are_capped_and_leave_workers_for_other_requests(serve, tmp_path):
    runner = ProcessRunner(tmp_path / "runner", "m", "host")
    try:
        runner.load("tick.service", parse_unit_file(TICKER))
        runner.start("tick.service")
        server = serve(runner=runner, workers=3, streams=2)
        follow = f"{V1}/units/tick.service/journal?lines=0&follow=true"
        streams = []
        for _ in range(2):
            conn = UnixConnection(server.socket_path, 30)
            conn.request("GET", follow)
            response = conn.getresponse()
            assert response.status == 200, (response.status, response.read(500))
            while not response.readline().rstrip().endswith(b": tick"):
                pass  # the runner's own lines ("Started …") may come first
            streams.append((conn, response))
        conn = UnixConnection(server.socket_path, 30)
        conn.request("GET", follow)
        refused = conn.getresponse()
        body = json.loads(refused.read())
        conn.close()
        assert refused.status == 503 and "2 journals" in body["error"]["message"]
        assert get(server) == 200, "a worker is left for other requests"
        first, response = streams.pop(0)
        response.close()
        first.close()

        def follows() -> bool:
            conn = UnixConnection(server.socket_path, 30)
            try:
                conn.request("GET", follow)
                response = conn.getresponse()
                ok = response.status == 200
                response.close()
                return ok
            finally:
                conn.close()
        wait_for(follows, 20, message="a stream slot freed when its client left")
        for conn, response in streams:
            response.close()
            conn.close()
    finally:
        runner.shutdown()


def test_fleetd_raises_its_open_files_limit_and_sizes_the_api_by_it():
    script = (
        "import resource\n"
        "from fleetd.api.server import connection_budget, raise_open_files_limit\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "print(connection_budget(4096))\n"
        "print(raise_open_files_limit(4096 + 1024), hard)\n"
        "print(connection_budget(4096))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split("\n")
    assert int(out[0]) == 128, "at 256 open files the API keeps half for the rest of fleetd"
    raised, hard = (int(v) if v.isdigit() else -1 for v in out[1].split())
    if hard == -1 or hard >= 5120:
        assert raised == 5120 and int(out[2]) == 4096
    else:
        assert raised == hard and int(out[2]) < 4096


def test_tcp_requests_are_answered_as_over_the_socket(serve):
    server = serve(tcp=True)
    host, port = server.tcp_address
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("GET", f"{V1}/discovery")
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("Server") == "fleetd"
        response.read()
        conn.request("GET", f"{V1}/machines")  # the same connection, kept alive
        response = conn.getresponse()
        assert response.status == 503 and "etcd" in json.loads(response.read())["error"][
            "message"]
    finally:
        conn.close()


def test_a_follower_that_stops_reading_is_dropped_and_its_stream_freed(serve, tmp_path):
    runner = ProcessRunner(tmp_path / "runner", "m", "host",
                           log_limits=LogLimits(max_bytes=1 << 30))
    try:
        runner.load("big.service", parse_unit_file(TICKER))  # loaded, never started
        writer = UnitLog(tmp_path / "runner" / "logs" / "big.service.log", "host",
                         LogLimits(max_bytes=1 << 30))
        for i in range(0, 60_000, 1000):  # ~27 MB, more than waitress buffers for a client
            writer.write_lines("big[1]", [f"{n} " + "x" * 400 for n in range(i, i + 1000)])
        server = serve(runner=runner, workers=2, streams=1, send_timeout=1.0)
        follow = f"{V1}/units/big.service/journal?lines=60000&follow=true"
        stuck = UnixConnection(server.socket_path, 30)
        stuck.request("GET", follow)
        held = stuck.getresponse()  # kept: it owns the socket now
        assert held.status == 200  # and never reads another byte

        def follows() -> bool:
            conn = UnixConnection(server.socket_path, 30)
            try:
                conn.request("GET", f"{V1}/units/big.service/journal?lines=1&follow=true")
                response = conn.getresponse()
                ok = response.status == 200
                response.close()
                return ok
            finally:
                conn.close()
        wait_for(follows, 30, message="the stuck follower dropped and its stream slot freed")
        held.close()
        stuck.close()
    finally:
        runner.shutdown()


RAW_REFUSALS = {
    "bad-start-line": (b"GARBAGE\r\n\r\n", 400, "Start line is invalid"),
    "head-over-64k": (b"GET /fleet/v1/discovery HTTP/1.1\r\nX-Pad: " + b"a" * 70_000
                      + b"\r\n\r\n", 431, "over 65536 bytes"),
    "transfer-coding": (b"PUT /fleet/v1/units/x.service HTTP/1.1\r\nTransfer-Encoding: gzip"
                        b"\r\n\r\n", 501, "Transfer-Encoding"),
    "chunked-body-over-1mib": (b"PUT /fleet/v1/units/x.service HTTP/1.1\r\nContent-Type: "
                               b"application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                               + b"100000\r\n" + b" " * 0x100000 + b"\r\n1\r\n \r\n0\r\n\r\n",
                               413, "1 MiB"),
}


@pytest.mark.parametrize("raw,status,fragment", RAW_REFUSALS.values(), ids=RAW_REFUSALS)
def test_what_is_refused_before_routing_is_a_json_error_and_a_close(serve, raw, status,
                                                                    fragment):
    server = serve()
    sock = connect(server)
    try:
        sock.sendall(raw)
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = json.loads(response.read())
    finally:
        sock.close()
    assert response.status == status
    assert response.getheader("Content-Type") == "application/json"
    assert response.getheader("Connection") == "close"
    assert body["error"]["code"] == status and fragment in body["error"]["message"]


def test_following_a_quiet_journal_ends_its_reader_when_the_client_leaves(serve, tmp_path):
    # This test's own reader threads, by identity: other tests' streams may still be ending
    # (their readers are daemons nobody waits for), so a count of all of them proves nothing.
    def readers() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "api-journal-reader"}
    runner = ProcessRunner(tmp_path / "runner", "m", "host")
    try:
        runner.load("quiet.service", parse_unit_file(
            "[Service]\nExecStart=/bin/sh -c 'echo once; exec sleep 1000'\n"))
        runner.start("quiet.service")
        server = serve(runner=runner)
        mine: set[threading.Thread] = set()
        for _ in range(3):  # fewer than the streams allowed: each ends in its own time
            before = readers()
            conn = UnixConnection(server.socket_path, 30)
            conn.request("GET", f"{V1}/units/quiet.service/journal?lines=10&follow=true")
            response = conn.getresponse()
            assert response.status == 200, (response.status, response.read(500))
            while not response.readline().rstrip().endswith(b": once"):
                pass
            mine |= readers() - before  # the line came from its reader: it is running
            response.close()
            conn.close()
        assert len(mine) == 3, f"one reader per stream: {mine}"
        try:
            wait_for(lambda: not any(t.is_alive() for t in mine), 20)
        except TimeoutError:
            left = sum(t.is_alive() for t in mine)
            raise AssertionError(f"{left} of 3 readers of a quiet journal still run 20s "
                                 "after their clients left") from None
    finally:
        runner.shutdown()
