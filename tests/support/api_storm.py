"""A buggy local API client and what a test or bench watches while it runs.

`IdleStorm` opens thousands of connections to fleetd's unix socket (half of them send
a request head that never ends, half send nothing), holds them and closes them all at
once. `Prober` keeps asking for the machine list on fresh connections meanwhile and
records every answer. `MachineKeyWatch` follows the machine's key in etcd: a
delete means the machine's lease was lost (its units would move).
"""

from __future__ import annotations

import http.client
import queue
import socket
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from fleetd.registry.etcd import Etcd

HALF_REQUEST = b"GET /fleet/v1/machines HTTP/1.1\r\nHost: fleet\r\nUser-Agent: buggy\r\n"


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = str(path)

    def connect(self) -> None:
        self.sock = connect_unix(self.socket_path, self.timeout)


def connect_unix(path: str, timeout: float) -> socket.socket:
    """A connected unix socket. A full listen backlog refuses a unix connect at once
    (EAGAIN) rather than making it wait: retry until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            return sock
        except BlockingIOError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.001)
        except BaseException:
            sock.close()
            raise


class IdleStorm:
    """`count` connections to `path`: every other one sends a request head without its end."""

    def __init__(self, path: Path, count: int, connect_timeout: float = 30.0) -> None:
        self.path, self.count, self.connect_timeout = str(path), count, connect_timeout
        self.sockets: list[socket.socket] = []
        self.open_s = 0.0
        self.close_s = 0.0
        self.refused = 0  # connections that could not be made within connect_timeout

    def open(self) -> IdleStorm:
        started = time.monotonic()
        for i in range(self.count):
            try:
                sock = connect_unix(self.path, self.connect_timeout)
            except OSError:
                self.refused += 1
                continue
            try:
                if i % 2:
                    sock.sendall(HALF_REQUEST)
            except OSError:
                sock.close()
                self.refused += 1
                continue
            self.sockets.append(sock)
        self.open_s = time.monotonic() - started
        return self

    def close(self) -> None:
        started = time.monotonic()
        for sock in self.sockets:
            sock.close()
        self.sockets = []
        self.close_s = time.monotonic() - started

    def closed_by_server(self) -> int:
        """How many of the held connections the server has closed (EOF readable)."""
        closed = 0
        for sock in self.sockets:
            try:
                sock.setblocking(False)
                if sock.recv(1, socket.MSG_PEEK) == b"":
                    closed += 1
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
            finally:
                sock.settimeout(self.connect_timeout)
        return closed


@dataclass
class Probe:
    started: float  # monotonic
    latency: float
    status: int | None  # None: no answer (error text in `error`)
    error: str = ""


@dataclass
class Prober:
    """Asks GET /fleet/v1/machines on a fresh connection every `interval` seconds."""

    path: Path
    interval: float = 0.05
    timeout: float = 30.0
    probes: list[Probe] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="api-prober", daemon=True)

    def start(self) -> Prober:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.timeout + 5)

    def once(self) -> Probe:
        started = time.monotonic()
        conn = UnixConnection(self.path, self.timeout)
        try:
            conn.request("GET", "/fleet/v1/machines")
            response = conn.getresponse()
            response.read()
            probe = Probe(started, time.monotonic() - started, response.status)
        except (OSError, http.client.HTTPException) as err:
            probe = Probe(started, time.monotonic() - started, None, repr(err))
        finally:
            conn.close()
        with self._lock:
            self.probes.append(probe)
        return probe

    def _run(self) -> None:
        while not self._stop.is_set():
            self.once()
            self._stop.wait(self.interval)

    def between(self, start: float, end: float) -> list[Probe]:
        with self._lock:
            return [p for p in self.probes if start <= p.started < end]


def summary(probes: list[Probe]) -> dict[str, float]:
    """Latency figures (ms) of the answered probes and how many were not 200."""
    latencies = sorted(p.latency * 1000 for p in probes if p.status == 200)
    if not latencies:
        return {"n": len(probes), "ok": 0, "failed": len(probes)}
    p95 = latencies[min(len(latencies) - 1, int(round(0.95 * (len(latencies) - 1))))]
    return {"n": len(probes), "ok": len(latencies), "failed": len(probes) - len(latencies),
            "p50_ms": statistics.median(latencies), "p95_ms": p95, "max_ms": latencies[-1]}


class MachineKeyWatch:
    """Every delete of one machine's key (its lease expired or was revoked)."""

    def __init__(self, etcd: Etcd, key: str) -> None:
        kv = etcd.get(key)
        if kv is None:
            raise RuntimeError(f"{key} is not registered")
        self.etcd, self.key = etcd, key
        self.create_revision = kv.create_revision
        self.events: queue.Queue = queue.Queue()
        self.deletes = 0
        self.failure: BaseException | None = None
        self._cancel = etcd.watch(key, kv.mod_revision + 1, self.events)

    def poll(self) -> int:
        """Deletes seen so far."""
        while True:
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                return self.deletes
            if isinstance(item, BaseException):
                self.failure = item
                continue
            self.deletes += sum(1 for event in item if event.key == self.key
                                and event.value is None)

    def same_registration(self) -> bool:
        """The key exists and was never re-created (the same lease throughout)."""
        kv = self.etcd.get(self.key)
        return kv is not None and kv.create_revision == self.create_revision

    def close(self) -> None:
        self._cancel()


def process_threads(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def process_rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
