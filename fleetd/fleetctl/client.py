"""HTTP client of the fleet API v1, over a unix socket or TCP.

A connection is kept open for the next request of the same thread (a listing's
pages, the PUTs of `start 'web@*'`): each request on a fresh one cost a connect and
a server-side accept. A kept connection the server closed meanwhile is reopened once
for a request it never received; a DELETE is never sent twice. Errors come back
typed: a 404 on a unit is `None`/`False` from the method (the caller knows what that
means), a 409 on PUT is `UnitConflict`, any other error status is `ApiError`, and a
socket that is missing, refuses or times out is `ConnectError` naming the endpoint.
"""

from __future__ import annotations

import codecs
import http.client
import json
import socket
import threading
import time
from collections import namedtuple
from collections.abc import Iterator, Mapping, Sequence
from urllib.parse import quote, urlencode, urlsplit

from fleetd.fleetctl.errors import ApiError, ConnectError, UnitConflict, UsageError
from fleetd.fleetctl.model import Machine, Unit, UnitState, malformed
from fleetd.unit.unitfile import UnitOption

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from typing import Any

    from fleetd.fleetctl.ssh import SshOptions

API_PREFIX = "/fleet/v1"
_MAX_PAGES = 10_000
# Items per page asked of the server: a listing of 1,000 units in one request instead of
# fleet's ten. fleet's servers ignore the parameter (their pages stay 100, followed by
# nextPageToken as ever); ours serve up to 1,000 (fleetd.api.encode.MAX_PAGE_SIZE).
LISTING_PAGE_SIZE = 1000


class Endpoint(namedtuple("Endpoint", ("scheme", "address"))):
    """Where an API listens: `unix` with a socket path, or `http`/`https` with host:port."""

    __slots__ = ()
    scheme: str
    address: str

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.address}"
        return f"{self.scheme}://{self.address}"


def parse_endpoint(text: str) -> Endpoint:
    """`unix:///path`, `http://host:port`, `https://host:port`; a bare `/path` is a socket."""
    text = text.strip()
    if not text:
        raise UsageError("the endpoint is empty; give unix:///path/to/fleet.sock or "
                         "http://host:port")
    if text.startswith("/"):
        return Endpoint("unix", text)
    parts = urlsplit(text)
    if parts.scheme in ("unix", "file"):
        if parts.netloc:
            raise UsageError(f"endpoint {text!r} names host {parts.netloc!r}; a socket path "
                             f"needs three slashes: unix:///{parts.netloc}{parts.path}")
        if not parts.path:
            raise UsageError(f"endpoint {text!r} has no socket path; write "
                             "unix:///path/to/fleet.sock")
        return Endpoint("unix", parts.path)
    if parts.scheme in ("http", "https"):
        if not parts.netloc:
            raise UsageError(f"endpoint {text!r} has no host; write {parts.scheme}://host:port")
        if parts.path not in ("", "/"):
            raise UsageError(f"endpoint {text!r} has a path; give only "
                             f"{parts.scheme}://{parts.netloc} (fleetctl adds /fleet/v1)")
        return Endpoint(parts.scheme, parts.netloc)
    raise UsageError(f"endpoint {text!r} is neither unix:///path/to/fleet.sock nor "
                     "http://host:port")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = path

    def connect(self) -> None:
        # A unix socket whose listen backlog is full refuses at once (EAGAIN) where TCP
        # would wait: a busy server, not a missing one; try again until the timeout.
        deadline = time.monotonic() + (self.timeout if self.timeout is not None else 5.0)
        delay = 0.005
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(self.timeout)
                sock.connect(self._socket_path)
            except BlockingIOError:
                sock.close()
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
                continue
            except BaseException:
                sock.close()
                raise
            self.sock = sock
            return


def unit_path(name: str, *rest: str) -> str:
    return "/".join((f"{API_PREFIX}/units/{quote(name, safe='@:')}",) + rest)


class _Listing(Mapping[str, Unit]):
    """Units by name, read from the API's JSON on first access (then kept)."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self._raw = raw
        self._read: dict[str, Unit] = {}

    def __getitem__(self, name: str) -> Unit:
        unit = self._read.get(name)
        if unit is None:
            unit = self._read[name] = Unit.from_json(self._raw[name])
        return unit

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __contains__(self, name: object) -> bool:
        return name in self._raw


class Client:
    """The fleet API at one endpoint; `timeout` bounds every single request (seconds)."""

    def __init__(self, endpoint: Endpoint, timeout: float = 5.0,
                 tunnel: SshOptions | None = None) -> None:
        """`tunnel`: reach the endpoint from the tunnel host, through ssh."""
        self.endpoint = endpoint
        self.timeout = timeout
        self.tunnel = tunnel
        self._kept = threading.local()  # .conn: this thread's open connection, if any
        self._every_kept: set[http.client.HTTPConnection] = set()  # of all threads
        self._lock = threading.Lock()

    # -- transport -------------------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        if self.tunnel is not None:
            from fleetd.fleetctl.remote import RelayConnection
            from fleetd.fleetctl.ssh import api_relay_argv

            return RelayConnection(api_relay_argv(self.tunnel, self.endpoint.scheme,
                                                  self.endpoint.address), self.timeout)
        if self.endpoint.scheme == "unix":
            return _UnixConnection(self.endpoint.address, self.timeout)
        if self.endpoint.scheme == "https":
            return http.client.HTTPSConnection(self.endpoint.address, timeout=self.timeout)
        return http.client.HTTPConnection(self.endpoint.address, timeout=self.timeout)

    def close(self) -> None:
        """Close every kept connection (of every thread that used this client)."""
        self._kept.conn = None
        with self._lock:
            kept, self._every_kept = self._every_kept, set()
        for conn in kept:
            conn.close()

    def _keep(self, conn: http.client.HTTPConnection | None) -> None:
        """Make `conn` this thread's kept connection (None: it has none); the one it
        replaces is closed."""
        old = getattr(self._kept, "conn", None)
        self._kept.conn = conn
        with self._lock:
            if old is not None:
                self._every_kept.discard(old)
            if conn is not None:
                self._every_kept.add(conn)
        if old is not None and old is not conn:
            old.close()

    def _open(self, method: str, path: str, query: Mapping[str, str] | None = None,
              body: Any = None, keep: bool = False
              ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send one request; `keep`: on this thread's kept connection when there is one
        (the caller hands it back with `_release`)."""
        target = path + (f"?{urlencode(query)}" if query else "")
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        kept = getattr(self._kept, "conn", None) if keep else None
        if kept is not None:
            self._kept.conn = None
            with self._lock:
                self._every_kept.discard(kept)
            try:
                kept.request(method, target, body=data, headers=headers)
                return kept, kept.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # closed by the server while idle, before it read this request (it
                # answers every request it reads): send it again on a new connection
                kept.close()
                if method == "DELETE":
                    raise ConnectError(f"fleet at {self.endpoint} closed the connection "
                                       f"during DELETE {path}; check whether it was "
                                       "deleted") from None
            except TimeoutError:
                kept.close()
                raise ConnectError(f"fleet at {self.endpoint} did not answer {method} "
                                   f"{path} within {self.timeout:g}s (--request-timeout)"
                                   ) from None
            except (OSError, http.client.HTTPException) as err:
                kept.close()
                raise ConnectError(self._unreachable(err)) from None
        conn = self._connection()
        try:
            conn.request(method, target, body=data, headers=headers)
            response = conn.getresponse()
        except TimeoutError:
            conn.close()
            raise ConnectError(f"fleet at {self.endpoint} did not answer {method} {path} "
                               f"within {self.timeout:g}s (--request-timeout)") from None
        except (OSError, http.client.HTTPException) as err:
            conn.close()
            raise ConnectError(self._unreachable(err)) from None
        return conn, response

    def _unreachable(self, err: BaseException) -> str:
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        if self.tunnel is not None:
            return (f"cannot reach fleet at {self.endpoint} through the SSH tunnel to "
                    f"{self.tunnel.tunnel}: {reason}; see ssh's message above (user "
                    f"{self.tunnel.username}: --ssh-username, keys: --ssh-config or ssh-agent)")
        hint = ("is fleetd running on this machine? set --endpoint or FLEETCTL_ENDPOINT "
                "to reach another one")
        return f"cannot reach fleet at {self.endpoint}: {reason}; {hint}"

    def _call(self, method: str, path: str, query: Mapping[str, str] | None = None,
              body: Any = None) -> tuple[int, bytes]:
        keep = self.tunnel is None  # through ssh, each connection is its own relay
        conn, response = self._open(method, path, query, body, keep=keep)
        done = False
        try:
            data = response.read()
            done = True
        except TimeoutError:
            raise ConnectError(f"fleet at {self.endpoint} stopped answering {method} {path} "
                               f"(--request-timeout {self.timeout:g}s)") from None
        except (OSError, http.client.HTTPException) as err:
            raise ConnectError(self._unreachable(err)) from None
        finally:
            if keep and done and not response.will_close:
                self._keep(conn)
            else:
                conn.close()
        return response.status, data

    def _json(self, path: str, status: int, data: bytes) -> Any:
        try:
            return json.loads(data.decode("utf-8")) if data else None
        except (UnicodeDecodeError, ValueError):
            raise malformed(f"{path} (HTTP {status})", "the body is not JSON") from None

    def _error(self, method: str, path: str, status: int, data: bytes) -> ApiError:
        message = ""
        try:
            document = json.loads(data.decode("utf-8"))
            message = str(document["error"]["message"])
        except (UnicodeDecodeError, ValueError, KeyError, TypeError):
            message = data.decode("utf-8", "replace").strip()[:200]
        reason = http.client.responses.get(status, "error")
        text = f"fleet API {method} {path}: {status} {reason}"
        return ApiError(f"{text}: {message}" if message else text, status)

    def get_json(self, path: str, query: Mapping[str, str] | None = None) -> Any:
        status, data = self._call("GET", path, query)
        if status != 200:
            raise self._error("GET", path, status, data)
        return self._json(path, status, data)

    def paged(self, path: str, key: str, query: Mapping[str, str] | None = None) -> list[Any]:
        """All items of a listing, following `nextPageToken` until it is absent (pages of
        LISTING_PAGE_SIZE unless `query` asks for another `pageSize`)."""
        items: list[Any] = []
        seen: set[str] = set()
        params = {"pageSize": str(LISTING_PAGE_SIZE), **(query or {})}
        for _ in range(_MAX_PAGES):
            document = self.get_json(path, params)
            if not isinstance(document, dict):
                raise malformed(path, "expected a JSON object")
            page = document.get(key) or []
            if not isinstance(page, list):
                raise malformed(path, f"{key!r} is not a list")
            items.extend(page)
            token = document.get("nextPageToken")
            if not token:
                return items
            if token in seen:
                raise malformed(path, f"page token {token!r} came back twice")
            seen.add(token)
            params["nextPageToken"] = str(token)
        raise malformed(path, f"more than {_MAX_PAGES} pages")

    # -- cluster-wide calls ----------------------------------------------------------

    def machines(self) -> list[Machine]:
        return [Machine.from_json(item) for item in
                self.paged(f"{API_PREFIX}/machines", "machines")]

    def units(self) -> list[Unit]:
        return [Unit.from_json(item) for item in self.paged(f"{API_PREFIX}/units", "units")]

    def units_by_name(self) -> Mapping[str, Unit]:
        """Every unit by name, each read from its JSON when first looked up: a command
        that acts on a few units of a large cluster reads no more of the listing."""
        raw: dict[str, Any] = {}
        for item in self.paged(f"{API_PREFIX}/units", "units"):
            name = item.get("name") if isinstance(item, dict) else None
            if not isinstance(name, str):
                Unit.from_json(item)  # says what is wrong with it
            raw[name] = item
        return _Listing(raw)

    def unit(self, name: str) -> Unit | None:
        path = unit_path(name)
        status, data = self._call("GET", path)
        if status == 404:
            return None
        if status != 200:
            raise self._error("GET", path, status, data)
        return Unit.from_json(self._json(path, status, data))

    def put_unit(self, name: str, desired_state: str,
                 options: Sequence[UnitOption] | None = None, replace: bool = False) -> bool:
        """Create (True) or change (False) a unit; 409 becomes UnitConflict. With options,
        `replace` False asks the server to refuse (409) different content stored meanwhile:
        fleet's own PUT replaces it silently."""
        path = unit_path(name)
        body: dict[str, Any] = {"desiredState": desired_state}
        query = None
        if options is not None:
            body["options"] = [{"section": o.section, "name": o.name, "value": o.value}
                               for o in options]
            query = {"replace": "true" if replace else "false"}
        status, data = self._call("PUT", path, query, body)
        if status == 409:
            raise UnitConflict(self._error("PUT", path, status, data).message)
        if status not in (200, 201, 204):
            raise self._error("PUT", path, status, data)
        return status == 201

    def delete_unit(self, name: str) -> bool:
        """True when deleted, False when there was no such unit."""
        path = unit_path(name)
        status, data = self._call("DELETE", path)
        if status == 404:
            return False
        if status not in (200, 204):
            raise self._error("DELETE", path, status, data)
        return True

    def states(self, machine_id: str | None = None,
               unit_name: str | None = None) -> list[UnitState]:
        query = {k: v for k, v in (("machineID", machine_id), ("unitName", unit_name)) if v}
        return [UnitState.from_json(item) for item in
                self.paged(f"{API_PREFIX}/state", "states", query)]

    # -- per-machine calls (sent to the fleetd of the machine running the unit) --------

    def unit_status(self, name: str) -> str:
        path = unit_path(name, "status")
        document = self.get_json(path)
        if not isinstance(document, dict) or not isinstance(document.get("status"), str):
            raise malformed(path, "expected {\"machineID\", \"status\"}")
        return document["status"]

    def journal(self, name: str, lines: int, follow: bool) -> Iterator[str]:
        """The unit's journal as text chunks; with `follow` it streams until closed."""
        path = unit_path(name, "journal")
        query = {"lines": str(lines), "follow": "true" if follow else "false"}
        conn, response = self._open("GET", path, query)
        try:
            if response.status != 200:
                raise self._error("GET", path, response.status, response.read())
            if follow and conn.sock is not None:
                conn.sock.settimeout(None)  # a quiet unit is not a dead server
            decoder = codecs.getincrementaldecoder("utf-8")("replace")
            while True:
                try:
                    chunk = response.read1(65536)
                except TimeoutError:
                    raise ConnectError(f"fleet at {self.endpoint} stopped sending the journal "
                                       f"of {name}") from None
                except (OSError, http.client.HTTPException) as err:
                    raise ConnectError(self._unreachable(err)) from None
                if not chunk:
                    break
                text = decoder.decode(chunk)
                if text:
                    yield text
            tail = decoder.decode(b"", final=True)
            if tail:
                yield tail
        finally:
            conn.close()
