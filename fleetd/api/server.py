"""fleet API v1 over HTTP/1.1: a unix socket (always) and an optional TCP listener.

Routes (under /fleet/v1): discovery, machines, units, units/<name>,
units/<name>/status, units/<name>/journal, state, state/<name>. Bodies are read before
routing (at most `MAX_BODY` bytes, Content-Length only), so a keep-alive
connection never falls out of step; a refused body closes the connection.

The unix socket is bound inside a private (0700) directory, made 0600 there and
renamed into place, so it never exists at its path with wider permissions. An
existing socket file is replaced only if nothing accepts connections on it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import queue
import select
import socket
import socketserver
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from fleetd.api import schema
from fleetd.api.errors import ApiError
from fleetd.api.handlers import Api, Response, answer, error

log = logging.getLogger("fleetd.api")
PREFIX = "/fleet/v1"
MAX_UNIX_PATH = 107  # sun_path is 108 bytes including the terminating NUL
STREAM_POLL_S = 0.25  # how often an idle journal stream checks for a gone client
STREAM_QUEUE = 10_000  # lines buffered between the journal reader and a slow client
JSON_TYPE = "application/json"


# -- routing -----------------------------------------------------------------------------------
def resolve(path: str) -> tuple[str, str | None] | None:
    """(resource, unit name or None) for a request path; None when nothing lives there.

    The path is split before percent-decoding, so an encoded '/' stays inside the name
    (and is refused by the name check) instead of selecting another route."""
    if not path.startswith(PREFIX + "/"):
        return None
    rest = path[len(PREFIX) + 1:]
    if rest in ("discovery", "machines", "units", "state"):
        return rest, None
    if rest.startswith("state/") and "/" not in rest[len("state/"):]:
        return "unit-state", unquote(rest[len("state/"):], errors="replace")
    if not rest.startswith("units/"):
        return None
    tail = rest[len("units/"):]
    head, slash, last = tail.rpartition("/")
    if slash and last in ("status", "journal") and head and "/" not in head:
        return f"unit-{last}", unquote(head, errors="replace")
    return "unit", unquote(tail, errors="replace")


def _media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def route(api: Api, method: str, path: str, query: schema.Query, content_type: str | None,
          body: bytes) -> Response:
    target = resolve(path)
    if target is None:
        raise ApiError(404, f"no such resource {path!r}; the API lives under {PREFIX}/ "
                            "(see /fleet/v1/discovery)")
    resource, name = target
    methods: dict[str, Callable[[], Response]]
    if resource == "discovery":
        methods = {"GET": api.discovery}
    elif resource == "machines":
        methods = {"GET": lambda: api.list_machines(query)}
    elif resource == "units":
        methods = {"GET": lambda: api.list_units(query)}
    elif resource == "state":
        methods = {"GET": lambda: api.list_states(query)}
    elif resource == "unit-state":
        methods = {"GET": lambda: api.get_state(name, query)}
    elif resource == "unit-status":
        methods = {"GET": lambda: api.unit_status(name)}
    elif resource == "unit-journal":
        methods = {"GET": lambda: api.journal(name, query)}
    else:
        def put() -> Response:
            if _media_type(content_type) != JSON_TYPE:
                raise ApiError(415, f"PUT bodies must be sent with Content-Type: {JSON_TYPE}, "
                                    f"not {content_type or 'none'!s}")
            return api.put_unit(name, body, query)
        methods = {"GET": lambda: api.get_unit(name), "PUT": put,
                   "DELETE": lambda: api.delete_unit(name)}
    call = methods.get(method)
    if call is None:
        allowed = ", ".join(methods)
        return error(405, f"only {allowed} supported against this resource", Allow=allowed)
    return call()


# -- HTTP --------------------------------------------------------------------------------------
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fleetd"
    timeout = 120  # an idle keep-alive connection is closed after this

    def __getattr__(self, name: str):
        # http.server looks up do_<METHOD>; every method goes through the router, which
        # answers 405 (with Allow) for those a resource does not support.
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)

    def _dispatch(self) -> None:
        api: Api = self.server.api  # type: ignore[attr-defined]
        try:
            body = self._read_body()
        except ApiError as err:
            self.close_connection = True
            self._send(error(err.status, err.message))
            return
        parts = urlsplit(self.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        response = answer(lambda: route(api, self.command, parts.path, query,
                                        self.headers.get("Content-Type"), body))
        if response.stream is not None:
            self._stream(response)
        else:
            self._send(response)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise ApiError(411, "send request bodies with a Content-Length header; chunked "
                                "bodies are not accepted")
        text = self.headers.get("Content-Length")
        if text is None:
            return b""
        text = text.strip()
        if not (text.isascii() and text.isdigit()):
            raise ApiError(400, f"Content-Length {text!r} is not a byte count")
        length = int(text)
        if length > schema.MAX_BODY:
            raise ApiError(413, f"request body is {length} bytes; the limit is "
                                f"{schema.MAX_BODY} bytes (1 MiB)")
        body = self.rfile.read(length)
        if len(body) != length:
            raise ApiError(400, "the request body ended before Content-Length bytes")
        return body

    def _send(self, response: Response) -> None:
        data = b""
        content_type = None
        if isinstance(response.body, dict):
            data = json.dumps(response.body, separators=(",", ":")).encode()
            content_type = JSON_TYPE
        elif isinstance(response.body, str):
            data = response.body.encode("utf-8")
            content_type = "text/plain; charset=utf-8"
        self.send_response(response.status)
        for key, value in response.headers.items():
            self.send_header(key, value)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        if response.status != 204:
            self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if data and self.command != "HEAD":
            self.wfile.write(data)

    def _stream(self, response: Response) -> None:
        """Send lines as HTTP chunks while they come; stop when the client goes away or the
        server closes. A reader thread feeds a queue, so this thread can notice a gone client
        while the journal is quiet; the reader ends at its next line (or when the runner stops
        following, at shutdown)."""
        assert response.stream is not None
        self.close_connection = True
        self.send_response(response.status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        lines: queue.Queue[str] = queue.Queue(STREAM_QUEUE)
        cancelled = threading.Event()
        reader = threading.Thread(target=_pump, args=(response.stream, lines, cancelled),
                                  name="api-journal-reader", daemon=True)
        reader.start()
        closing: threading.Event = self.server.closing  # type: ignore[attr-defined]
        connected = True
        try:
            while True:
                try:
                    batch = [lines.get(timeout=STREAM_POLL_S)]
                except queue.Empty:
                    if closing.is_set() or self._client_gone() or (
                            not reader.is_alive() and lines.empty()):
                        break
                    continue
                while len(batch) < 1000:
                    try:
                        batch.append(lines.get_nowait())
                    except queue.Empty:
                        break
                data = "".join(f"{line}\n" for line in batch).encode("utf-8")
                try:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                except OSError:
                    connected = False
                    break
        finally:
            cancelled.set()
        if connected:
            try:
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        # http.server's own refusals (bad request line, unknown method) as JSON errors too.
        self.close_connection = True
        if not hasattr(self, "command"):
            self.command = None
        text = message or self.responses.get(code, ("error",))[0]
        self._send(error(code, f"{text}{': ' + explain if explain else ''}"))

    def address_string(self) -> str:
        address = self.client_address
        return address[0] if isinstance(address, tuple) and address else "unix"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base signature
        log.debug("%s %s", self.address_string(), format % args)


def _pump(lines: Iterator[str], out: queue.Queue, cancelled: threading.Event) -> None:
    try:
        for line in lines:
            while not cancelled.is_set():
                try:
                    out.put(line, timeout=STREAM_POLL_S)
                    break
                except queue.Full:
                    continue
            if cancelled.is_set():
                return
    except Exception:  # noqa: BLE001 - the stream just ends; the log says why
        log.exception("journal stream failed")
    finally:
        close = getattr(lines, "close", None)
        if close is not None:
            close()


class _Connections:
    """Tracks open connections so `close()` can end idle keep-alive ones at once: shutting
    down the read side wakes a handler waiting for the next request, while a handler that is
    answering can still write its response."""

    def _track(self) -> None:
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def process_request(self, request, client_address) -> None:  # noqa: ANN001
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)  # type: ignore[misc]

    def shutdown_request(self, request) -> None:  # noqa: ANN001
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)  # type: ignore[misc]

    def end_connections(self) -> None:
        with self.connections_lock:
            open_now = list(self.connections)
        for request in open_now:
            try:
                request.shutdown(socket.SHUT_RD)
            except OSError:
                pass


class _TcpServer(_Connections, ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple, family: int, api: Api,
                 closing: threading.Event) -> None:
        self._track()
        self.address_family = family
        self.api = api
        self.closing = closing
        super().__init__(address, Handler)


class _UnixServer(_Connections, socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, path: Path, api: Api, closing: threading.Event) -> None:
        self._track()
        self.api = api
        self.closing = closing
        self.path = path
        self.inode: tuple[int, int] | None = None
        super().__init__(str(path), Handler)

    def server_bind(self) -> None:
        self.inode = bind_unix_socket(self.socket, self.path)
        self.server_address = str(self.path)

    def server_close(self) -> None:
        super().server_close()
        try:  # remove the socket file only if it is still ours
            st = os.lstat(self.path)
            if self.inode == (st.st_dev, st.st_ino):
                os.unlink(self.path)
        except FileNotFoundError:
            pass


def bind_unix_socket(sock: socket.socket, path: Path) -> tuple[int, int]:
    """Bind `sock` at `path` with mode 0600, atomically; returns the file's (dev, inode)."""
    for shown in (path, path.parent / ".XXXXXXXXXX/s"):
        if len(os.fsencode(shown)) > MAX_UNIX_PATH:
            raise OSError(errno.ENAMETOOLONG, f"unix socket path {path} is too long (at most "
                                              f"{MAX_UNIX_PATH - 12} bytes); set api_socket "
                                              "to a shorter path")
    refuse_live_socket(path)
    private = tempfile.mkdtemp(prefix=".", dir=path.parent)  # mode 0700: nobody else gets in
    staged = os.path.join(private, "s")
    try:
        sock.bind(staged)
        os.chmod(staged, 0o600)
        os.rename(staged, path)  # atomic; replaces a stale socket file
        st = os.lstat(path)
        return st.st_dev, st.st_ino
    finally:
        try:
            os.unlink(staged)
        except FileNotFoundError:
            pass
        os.rmdir(private)


def refuse_live_socket(path: Path) -> None:
    """Raise if `path` is anything but absent or a socket nobody listens on."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket; refusing to replace "
                                    "it (move it away or set api_socket)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return  # stale: left by a fleetd that died
    except OSError as err:
        raise OSError(errno.EADDRINUSE, f"cannot tell whether {path} is in use ({err}); "
                                        "remove it if no fleetd runs") from None
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"another process listens on {path}; stop it or set "
                                    "api_socket to another path")


class ApiServer:
    """Both listeners. Binds on construction (so the machine record can carry the URL);
    serves after `start()`; `close()` stops listening, ends streams and removes the socket."""

    def __init__(self, api: Api, socket_path: Path,
                 tcp_address: tuple[str, int] | None = None) -> None:
        self.closing = threading.Event()
        self.socket_path = Path(socket_path).absolute()
        self.servers: list[_TcpServer | _UnixServer] = [
            _UnixServer(self.socket_path, api, self.closing)]
        self.tcp: _TcpServer | None = None
        if tcp_address is not None:
            try:
                host, port = tcp_address
                family, _, _, _, sockaddr = socket.getaddrinfo(
                    host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
                self.tcp = _TcpServer(sockaddr[:2], family, api, self.closing)
            except BaseException:
                self.servers[0].server_close()
                raise
            self.servers.append(self.tcp)
        self.threads: list[threading.Thread] = []

    @property
    def tcp_address(self) -> tuple[str, int] | None:
        return self.tcp.socket.getsockname()[:2] if self.tcp is not None else None

    def url(self, public_ip: str = "") -> str:
        """How other machines reach this API: the TCP listener if any, else the socket."""
        if self.tcp_address is None:
            return f"unix://{self.socket_path}"
        host, port = self.tcp_address
        if host in ("0.0.0.0", "::") and public_ip:
            host = public_ip
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> None:
        for server in self.servers:
            name = "api-tcp" if server is self.tcp else "api-unix"
            thread = threading.Thread(target=server.serve_forever, args=(0.2,), name=name,
                                      daemon=True)
            thread.start()
            self.threads.append(thread)
        log.info("fleet API listening on %s", ", ".join(
            [f"unix://{self.socket_path}"] + ([self.url()] if self.tcp else [])))

    def close(self, timeout: float = 5.0) -> None:
        self.closing.set()
        if self.threads:
            for server in self.servers:
                server.shutdown()
        for server in self.servers:
            server.server_close()
            server.end_connections()
        for thread in self.threads:
            thread.join(timeout)
        self.threads = []
