"""Is a local node healthy? The probes `up`, `node start` and `status` share.

    python -m provision.providers.local.health ENDPOINTS PREFIX   (a prober in a namespace)

- etcd: a read through the node's own client URL answers (a member in a
  cluster with quorum, the discovery etcd, or a gateway reaching the members);
- fleet: the node's machine key exists under fleet's prefix (`<prefix>machine/<id>`);
- units: every node unit the user-data starts is active, as the supervisor reports.

Each probe is a condition polled against a deadline by the caller; none sleeps.
A `Prober` runs them here; a `NamespaceProber` runs them through a helper process
inside the cluster's network namespace (dns-srv clusters), where the nodes are.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from fleetd.registry.keys import Keys, Kind

if TYPE_CHECKING:  # the etcd client (grpc) costs ~0.15 s to import: `down` never needs it
    from fleetd.registry.etcd import Etcd, EtcdTLS

PROBE_TIMEOUT_S = 1.0
EXCERPT_LINES = 12
EXCERPT_WIDTH = 300
CAUSE_WIDTH = 500
MAX_CAUSES = 6
CAUSE_SCAN_BYTES = 256 * 1024


def etcd_healthy(url: str, timeout: float = PROBE_TIMEOUT_S,
                 tls: EtcdTLS | None = None) -> bool:
    import etcd3

    parts = urlsplit(url)
    # A fresh client per probe: etcd3 keeps a refused endpoint marked failed for long.
    files = {}
    if parts.scheme == "https" and tls is not None:
        files = {"ca_cert": tls.ca_file, "cert_cert": tls.cert_file, "cert_key": tls.key_file}
    try:
        client = etcd3.client(host=parts.hostname, port=parts.port or 2379, timeout=timeout,
                              **files)
    except OSError:  # the certificate files went away
        return False
    try:
        client.get("/provision/health")
        return True
    except Exception:  # any failure means "not healthy yet"
        return False
    finally:
        client.close()


class MachineProbe:
    """Reads the machine ids fleet has registered, through any member that answers."""

    def __init__(self, endpoints: list[str], prefix: str, tls: EtcdTLS | None = None) -> None:
        self.endpoints = endpoints
        self.keys = Keys(prefix)
        self.tls = tls
        self._etcd: Etcd | None = None

    def machines(self) -> set[str] | None:
        """Registered machine ids, or None when etcd cannot be read now."""
        try:
            if self._etcd is None:
                from fleetd.registry.etcd import Etcd

                self._etcd = Etcd(self.endpoints, timeout=PROBE_TIMEOUT_S, tls=self.tls)
            _, kvs = self._etcd.snapshot(self.keys.of(Kind.MACHINE))
        except Exception:  # not reachable yet
            self.close()
            return None
        found = set()
        for kv in kvs:
            parsed = self.keys.parse(kv.key)
            if parsed is not None and parsed.kind is Kind.MACHINE:
                found.add(parsed.name)
        return found

    def close(self) -> None:
        if self._etcd is not None:
            try:
                self._etcd.close()
            except Exception:  # closing a broken client
                pass
            self._etcd = None


class Prober:
    """etcd health of many nodes at once, and fleet's registered machines, from here."""

    def __init__(self, endpoints: list[str], prefix: str, tls: EtcdTLS | None = None) -> None:
        self._machines = MachineProbe(endpoints, prefix, tls)
        self._tls = tls
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="probe")

    def etcd(self, urls: list[str]) -> list[bool]:
        return list(self._pool.map(lambda url: etcd_healthy(url, tls=self._tls), urls))

    def machines(self) -> set[str] | None:
        return self._machines.machines()

    def close(self) -> None:
        self._machines.close()
        self._pool.shutdown(wait=False, cancel_futures=True)


class NamespaceProber:
    """The same probes, answered by `python -m ...health` inside a network namespace."""

    def __init__(self, endpoints: list[str], prefix: str, exec_prefix: list[str],
                 env: dict[str, str], tls: EtcdTLS | None = None) -> None:
        files = [tls.ca_file, tls.cert_file, tls.key_file] if tls is not None else []
        self._proc = subprocess.Popen(
            [*exec_prefix, sys.executable, "-m", "provision.providers.local.health",
             ",".join(endpoints), prefix, *files], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, env=env)

    def _ask(self, request: dict) -> object:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        try:
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
        except OSError:
            line = ""
        return json.loads(line)["answer"] if line else None

    def etcd(self, urls: list[str]) -> list[bool]:
        answer = self._ask({"op": "etcd", "urls": urls})
        return list(answer) if isinstance(answer, list) else [False] * len(urls)

    def machines(self) -> set[str] | None:
        answer = self._ask({"op": "machines"})
        return set(answer) if isinstance(answer, list) else None

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()  # type: ignore[union-attr]
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


def serve(endpoints: list[str], prefix: str, tls: EtcdTLS | None = None) -> None:
    """Answer probe requests, one JSON line each, until stdin closes."""
    prober = Prober(endpoints, prefix, tls)
    try:
        for line in sys.stdin:
            request = json.loads(line)
            if request.get("op") == "etcd":
                answer: object = prober.etcd(list(request["urls"]))
            else:
                found = prober.machines()
                answer = sorted(found) if found is not None else None
            sys.stdout.write(json.dumps({"answer": answer}) + "\n")
            sys.stdout.flush()
    finally:
        prober.close()


def unit_state(node_status: dict | None, unit: str) -> tuple[str, str]:
    info = ((node_status or {}).get("units") or {}).get(unit) or {}
    return info.get("active", "inactive"), info.get("sub", "dead")


def excerpt(path: Path, lines: int = EXCERPT_LINES) -> str:
    """For error messages: the log's error lines (its cause, deduplicated), then its last
    lines, each clipped. A Go program's tail is often only a stack; the cause (etcd's
    `"level":"panic"` line, `panic: …`) comes before it."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - CAUSE_SCAN_BYTES))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return f"(no log at {path})"
    every = text.splitlines()
    if size > CAUSE_SCAN_BYTES:
        every = every[1:]  # the first one may be cut in the middle
    tail = [_clip(line, EXCERPT_WIDTH) for line in every[-lines:]]
    found = causes(every)
    head = ""
    if found:
        head = (f"--- errors in {path.name} (deduplicated) ---\n"
                + "\n".join(_clip(c, CAUSE_WIDTH) for c in found) + "\n")
    return head + f"--- last lines of {path} ---\n" + "\n".join(tail)


def _clip(line: str, width: int) -> str:
    return line if len(line) <= width else line[:width] + " …"


# A unit log line: "<timestamp> <host> <ident>: <what the process wrote>".
_UNIT_LOG_PREFIX = re.compile(r"^\S+ \S+ [^\s:]+: ")
# capnslog (etcd 3.4): "2026-01-01 12:00:00.000000 C | etcdserver: …" (C critical, E error).
_CAPNSLOG = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ ([CEF]) \| (.*)$")
_TEXT_CAUSE = re.compile(r"^(panic: |fatal error: |fatal: |FATAL|PANIC)")
_SEVERITY = {"panic": 3, "dpanic": 3, "fatal": 3, "C": 3, "F": 3, "error": 1, "E": 1}


def causes(lines: list[str], limit: int = MAX_CAUSES) -> list[str]:
    """The lines of a log that say what went wrong, without timestamps, each once.

    etcd's zap JSON lines of level error and worse become `level: msg (path=…): error`;
    capnslog's critical and error lines, `panic:` and `fatal error:` lines are kept as
    written. When there are more than `limit`, the fatal ones win over plain errors,
    then the most recent; the result keeps the log's order.
    """
    found: dict[str, tuple[int, int]] = {}  # text -> (severity, last position)
    for position, raw in enumerate(lines):
        line = _UNIT_LOG_PREFIX.sub("", raw, count=1).strip()
        text, severity = _cause(line)
        if text is not None:
            found.pop(text, None)
            found[text] = (severity, position)
    # Go's `panic: msg` repeats zap's panic line minus its detail: keep the fuller one.
    found = {text: rank for text, rank in found.items()
             if not any(other != text and other.startswith(text) for other in found)}
    if len(found) > limit:
        keep = sorted(found.items(), key=lambda item: item[1], reverse=True)[:limit]
        found = dict(sorted(keep, key=lambda item: item[1][1]))
    return list(found)


def _cause(line: str) -> tuple[str | None, int]:
    if line.startswith("{"):
        try:
            record = json.loads(line)
        except ValueError:
            return None, 0
        level = str(record.get("level", "")) if isinstance(record, dict) else ""
        if level not in _SEVERITY:
            return None, 0
        text = f"{level}: {record.get('msg', '')}"
        if record.get("path"):
            text += f" (path={record['path']})"
        if record.get("error"):
            text += f": {record['error']}"
        return text, _SEVERITY[level]
    match = _CAPNSLOG.match(line)
    if match:
        return f"{match[1]} | {match[2]}", _SEVERITY[match[1]]
    if _TEXT_CAUSE.match(line):
        return line, 2
    return None, 0


def _tls(files: list[str]) -> EtcdTLS | None:
    from fleetd.registry.etcd import EtcdTLS

    return EtcdTLS(*files) if len(files) == 3 else None


if __name__ == "__main__":
    serve([u for u in sys.argv[1].split(",") if u], sys.argv[2],
          _tls(sys.argv[3:6]))
