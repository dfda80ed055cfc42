"""fleet API v1 over HTTP/1.1: a unix socket (always) and an optional TCP listener.

Routes (under /fleet/v1): discovery, machines, units, units/<name>,
units/<name>/status, units/<name>/journal, state, state/<name>.

HTTP is waitress's: one I/O loop thread (poll) reads every request whole, at most
`MAX_BODY` bytes of body, and writes every response; a bounded pool of workers runs
the handlers on complete requests only. So a client that connects and says nothing,
sends half a request or leaves in the middle costs a file descriptor and a little
memory, never a thread, and nothing it does reaches fleetd's log. `Limits` bounds the
rest: connections, workers, followed journals, and the time a request may take to
arrive. The handlers stay HTTP-agnostic (`Response`); `_App` is the WSGI edge.

The unix socket is bound inside a private (0700) directory, made 0600 there and
renamed into place, so it never exists at its path with wider permissions (waitress's
own unix_socket binds and then chmods); an existing socket file is replaced only if
nothing accepts connections on it. waitress then serves the bound socket.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import queue
import resource
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer, UnixWSGIServer
from waitress.task import ErrorTask, ThreadedTaskDispatcher
from waitress.utilities import RequestEntityTooLarge, RequestHeaderFieldsTooLarge

from fleetd.api import schema
from fleetd.api.errors import ApiError
from fleetd.api.handlers import Api, Response, answer, error

log = logging.getLogger("fleetd.api")
PREFIX = "/fleet/v1"
MAX_UNIX_PATH = 107  # sun_path is 108 bytes including the terminating NUL
MAX_HEADER = 64 * 1024  # request line and headers; fleet's requests need a few hundred bytes
ACCEPT_BATCH = 256  # connections taken from the listen backlog per I/O loop pass
FD_RESERVE = 1024  # file descriptors kept for the rest of fleetd (unit logs, pipes, etcd)
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


# -- HTTP: a WSGI edge over the handlers --------------------------------------------------------
@dataclass(frozen=True)
class Limits:
    """What one fleetd's API may take: every bound is a figure here.

    connections: open connections over both listeners (more wait in the listen backlog);
    workers: threads answering complete requests (reading and writing are the I/O
    loop's job, so a slow or silent client never holds one); streams: journals followed
    at once (each holds a worker while it lasts, so some always stay free for other
    requests); header_timeout: a request head must arrive within this (counted from its
    first byte, or from the connection for its first request); body_timeout: its body
    within this after the head; idle_timeout: a kept-alive connection between requests;
    send_timeout: a client that takes nothing of its answer for this long is dropped
    (a follower that stopped reading would otherwise hold its worker for good)."""

    connections: int = 4096
    workers: int = 8
    streams: int = 4
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 60.0
    send_timeout: float = 60.0


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"


def _encoded(response: Response) -> tuple[list[tuple[str, str]], bytes]:
    """The headers and bytes of a non-streamed response."""
    headers = list(response.headers.items())
    data = b""
    if isinstance(response.body, dict):
        data = json.dumps(response.body, separators=(",", ":")).encode()
        headers.append(("Content-Type", JSON_TYPE))
    elif isinstance(response.body, str):
        data = response.body.encode("utf-8")
        headers.append(("Content-Type", "text/plain; charset=utf-8"))
    if response.status != 204:
        headers.append(("Content-Length", str(len(data))))
    return headers, data


class _App:
    """The WSGI application: the request as the router wants it, the response as HTTP.

    The path is taken undecoded (REQUEST_URI), so an encoded '/' stays inside a unit name.
    waitress has read the whole body before this runs (at most MAX_BODY bytes)."""

    def __init__(self, api: Api, closing: threading.Event, streams: int) -> None:
        self.api = api
        self.closing = closing
        self.streams = threading.BoundedSemaphore(streams)
        self.stream_limit = streams

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        parts = urlsplit(environ.get("REQUEST_URI") or environ.get("PATH_INFO", ""))
        query = parse_qs(parts.query, keep_blank_values=True)
        body = environ["wsgi.input"].read()
        response = answer(lambda: route(self.api, method, parts.path, query,
                                        environ.get("CONTENT_TYPE"), body))
        if response.stream is not None:
            return self._stream(response.stream, environ, start_response)
        headers, data = _encoded(response)
        start_response(_status_line(response.status), headers)
        return [data] if data and method != "HEAD" else []

    def _stream(self, lines: Iterator[str], environ: dict,
                start_response: Callable) -> Iterable[bytes]:
        if not self.streams.acquire(blocking=False):
            _close(lines)
            headers, data = _encoded(error(
                503, f"this fleetd already streams {self.stream_limit} journals, its limit; "
                     "stop one, or read the journal without following it"))
            start_response(_status_line(503), headers)
            return [data]
        try:
            write = start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"),
                                              ("Cache-Control", "no-cache")])
            write(b"")  # the head goes now: a quiet journal still answers at once
            return _JournalStream(lines, environ["waitress.client_disconnected"],
                                  self.closing, self.streams.release)
        except BaseException:
            self.streams.release()
            _close(lines)
            raise


class _JournalStream:
    """Lines as HTTP chunks while they come, until the client goes away or the server
    closes. A reader thread feeds a queue, so the worker notices a gone client while the
    journal is quiet; the reader ends when the stream is closed if the runner's lines
    can be cancelled (the process runner's can), else at its next line."""

    def __init__(self, lines: Iterator[str], gone: Callable[[], bool],
                 closing: threading.Event, release: Callable[[], None]) -> None:
        self.gone, self.closing, self.lines = gone, closing, lines
        self._release: Callable[[], None] | None = release
        self.queue: queue.Queue[str] = queue.Queue(STREAM_QUEUE)
        self.cancelled = threading.Event()
        self.reader = threading.Thread(target=_pump, args=(lines, self.queue, self.cancelled),
                                       name="api-journal-reader", daemon=True)
        self.reader.start()

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                batch = [self.queue.get(timeout=STREAM_POLL_S)]
            except queue.Empty:
                if self.closing.is_set() or self.gone() or (
                        not self.reader.is_alive() and self.queue.empty()):
                    return
                continue
            while len(batch) < 1000:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            yield "".join(f"{line}\n" for line in batch).encode("utf-8")

    def close(self) -> None:  # waitress calls it however the response ended
        self.cancelled.set()
        cancel = getattr(self.lines, "cancel", None)
        if cancel is not None:  # the reader may wait for a line that never comes
            cancel()
        release, self._release = self._release, None
        if release is not None:
            release()


def _close(lines: Iterator[str]) -> None:
    close = getattr(lines, "close", None)
    if close is not None:
        close()


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
    except Exception:  # the stream just ends; the log says why
        log.exception("journal stream failed")
    finally:
        _close(lines)


class _ErrorTask(ErrorTask):
    """What waitress refuses before the application sees it (a malformed request, a head
    or body over its limit, an unsupported transfer coding), as fleet's JSON errors."""

    def execute(self) -> None:
        problem = self.request.error
        status = int(getattr(problem, "code", 400))
        if isinstance(problem, RequestEntityTooLarge):
            size = (f"{self.request.content_length} bytes" if self.request.content_length
                    else "over the limit")
            message = (f"request body is {size}; the limit is {schema.MAX_BODY} bytes "
                       "(1 MiB)")
        elif isinstance(problem, RequestHeaderFieldsTooLarge):
            message = (f"request line and headers are over {MAX_HEADER} bytes; send a "
                       "shorter request")
        else:
            message = f"{getattr(problem, 'reason', 'Bad Request')}: {problem.body}"
        headers, data = _encoded(error(status, message))
        self.status = _status_line(status)
        self.response_headers.extend(h for h in headers if h[0] != "Content-Length")
        self.set_close_on_finish()
        self.content_length = len(data)
        self.write(data)


class _Channel(HTTPChannel):
    """One connection, with deadlines for what it owes: its request head within the header
    timeout (from its first byte; from the connection for its first request), the body
    within the body timeout after the head, the next request within the idle timeout,
    and while it is answered, some progress in taking the answer within the send timeout.
    All of it runs on the I/O loop thread, as waitress's own maintenance does."""

    error_task_class = _ErrorTask

    def __init__(self, *args, **kwargs) -> None:  # waitress's arguments, passed on
        self.heard = False  # any byte received yet
        self.reading: object | None = None  # the parser of the request being received
        self.head_since = 0.0
        self.body_since = 0.0
        self.body_of: object | None = None
        super().__init__(*args, **kwargs)
        self.head_since = self.creation_time

    def received(self, data: bytes) -> bool:
        now = time.time()
        heard, self.heard = self.heard, self.heard or bool(data)
        result = super().received(data)
        request = self.request
        if request is not None and request is not self.reading:
            self.head_since = now if heard else self.creation_time
        self.reading = request
        if request is not None and request.headers_finished and request is not self.body_of:
            self.body_of, self.body_since = request, now
        return result

    def overdue(self, now: float, limits: Limits) -> str | None:
        """Why this connection is to be closed now, if it is."""
        if self.requests:  # being answered
            if self.total_outbufs_len and now - self.last_activity > limits.send_timeout:
                return "the client stopped reading its answer"
            return None
        request = self.request
        if request is None:
            if not self.heard and now - self.creation_time > limits.header_timeout:
                return "no request within the header timeout"
            if self.heard and now - self.last_activity > limits.idle_timeout:
                return "idle"
            return None
        if not request.headers_finished:
            if now - self.head_since > limits.header_timeout:
                return "request head not complete within the header timeout"
            return None
        if now - self.body_since > limits.body_timeout:
            return "request body not complete within the body timeout"
        return None


class _Deadlines:
    """Server side of `_Channel`'s deadlines: replaces waitress's idle-only maintenance."""

    channel_class = _Channel
    limits: Limits
    expired: list[_Channel]
    wake_lock: threading.Lock  # shared with `ApiServer`, which closes the triggers under it

    def pull_trigger(self) -> None:
        """Wake the I/O loop, from any thread, whatever the loop is doing: workers and
        `ApiServer.close` pull while the loop thread may be closing the trigger's pipe
        (its descriptor number could then be another file's), so a pull and the pipe's
        close exclude each other and a closed trigger is not pulled."""
        with self.wake_lock:
            trigger = self.trigger  # type: ignore[attr-defined]
            if trigger._closed:
                return
            try:
                trigger.pull_trigger()
            except BlockingIOError:
                pass  # the pipe is full: the loop has wake-ups enough waiting

    def handle_accept(self) -> None:
        # waitress accepts one connection per loop pass, and a pass visits every open
        # connection: a burst of thousands would queue a real client behind it for
        # seconds. Take what the backlog holds, up to the limit, in one pass.
        for _ in range(ACCEPT_BATCH):
            before = len(self._map)  # type: ignore[attr-defined]
            if before >= self.adj.connection_limit:  # type: ignore[attr-defined]
                return
            super().handle_accept()  # type: ignore[misc]
            if len(self._map) == before:  # type: ignore[attr-defined]
                return  # the backlog is empty

    def maintenance(self, now: float) -> None:
        # Closed by `reap` after this loop pass, not through will_close (that waits for
        # the socket to turn writable, which a client that stopped reading never lets
        # it do) nor right here: this runs while the pass registers descriptors, and a
        # descriptor closed now could be reused by an accept in the same pass.
        for channel in list(self.active_channels.values()):  # type: ignore[attr-defined]
            why = channel.overdue(now, self.limits)
            if why is not None and channel not in self.expired:
                log.debug("closing API connection: %s", why)
                self.expired.append(channel)
        if self.expired:
            self.pull_trigger()  # type: ignore[attr-defined] - end this pass now

    def reap(self) -> None:
        """Close what maintenance found overdue; between loop passes, on the loop's
        thread (a worker writing to one of them wakes and stops)."""
        expired, self.expired = self.expired, []
        channels = self.active_channels  # type: ignore[attr-defined]
        for channel in expired:
            if channel._fileno is not None and channels.get(channel._fileno) is channel:
                channel.handle_close()


class _UnixServer(_Deadlines, UnixWSGIServer):
    pass


class _TcpServer(_Deadlines, TcpWSGIServer):
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
    """Both listeners, served by waitress: one I/O loop thread reads requests and writes
    responses for every connection, a bounded pool of workers runs the handlers.

    Binds on construction (so the machine record can carry the URL) and listens, but
    serves only after `start()`; `close()` stops listening, ends streams and every
    connection, and removes the socket."""

    def __init__(self, api: Api, socket_path: Path,
                 tcp_address: tuple[str, int] | None = None,
                 limits: Limits | None = None) -> None:
        limits = limits or Limits()
        connections = connection_budget(limits.connections)
        if connections < limits.connections:
            log.warning("fleet API: %d connections at most (open-files limit %d); raise "
                        "RLIMIT_NOFILE for more", connections, open_files_limit())
        self.limits = replace(limits, connections=connections)
        self.closing = threading.Event()
        self.socket_path = Path(socket_path).absolute()
        self.app = _App(api, self.closing, self.limits.streams)
        self.map: dict = {}
        self.dispatcher = ThreadedTaskDispatcher()
        self._stopping = False
        self._loop: threading.Thread | None = None
        self._closed = False
        self._wake_lock = threading.Lock()
        _quiet_waitress()
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.inode: tuple[int, int] | None = bind_unix_socket(unix, self.socket_path)
        except BaseException:
            unix.close()
            raise
        self.tcp: _TcpServer | None = None
        # waitress counts its listeners and their wake-up pipes among the connections
        self._overhead = 2 * (1 + (tcp_address is not None))
        try:
            self.unix = self._serve_on(_UnixServer, unix)
            if tcp_address is not None:
                host, port = tcp_address
                family, kind, proto, _, sockaddr = socket.getaddrinfo(
                    host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
                tcp = socket.socket(family, kind, proto)
                try:
                    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    tcp.bind(sockaddr[:2])
                except BaseException:
                    tcp.close()
                    raise
                self.tcp = self._serve_on(_TcpServer, tcp)
        except BaseException:
            self._close_listeners()
            raise

    def _serve_on(self, kind: type, sock: socket.socket):  # a waitress server
        adjustments = Adjustments(
            sockets=[sock], threads=self.limits.workers,
            connection_limit=self.limits.connections + self._overhead,
            backlog=min(self.limits.connections, 4096),
            channel_timeout=max(1, round(self.limits.idle_timeout)),
            cleanup_interval=1, asyncore_loop_timeout=1, asyncore_use_poll=True,
            channel_request_lookahead=1,  # a worker can see that its client went away
            max_request_header_size=MAX_HEADER,
            max_request_body_size=schema.MAX_BODY + 1,  # waitress refuses at >= this
            log_socket_errors=False, ident="fleetd", expose_tracebacks=False,
            clear_untrusted_proxy_headers=False, url_scheme="http")
        sockinfo = (sock.family, sock.type, sock.proto, sock.getsockname())
        server = kind(self.app, map=self.map, _sock=sock, dispatcher=self.dispatcher,
                      adj=adjustments, bind_socket=False, sockinfo=sockinfo)
        server.limits = self.limits
        server.expired = []
        server.wake_lock = self._wake_lock
        os.set_blocking(server.trigger.trigger, False)  # a pull never waits for the loop
        return server

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

    def open_connections(self) -> int:
        """Connections open now, over both listeners."""
        return len(self.unix.active_channels) + (
            len(self.tcp.active_channels) if self.tcp is not None else 0)

    def start(self) -> None:
        if self._loop is not None or self._closed:
            return
        self.dispatcher.set_thread_count(self.limits.workers)
        self._loop = threading.Thread(target=self._run, name="api-io", daemon=True)
        self._loop.start()
        log.info("fleet API listening on %s (at most %d connections, %d workers)", ", ".join(
            [f"unix://{self.socket_path}"] + ([self.url()] if self.tcp else [])),
            self.limits.connections, self.limits.workers)

    def _run(self) -> None:
        try:
            servers = [self.unix] + ([self.tcp] if self.tcp is not None else [])
            while not self._stopping:
                wasyncore.loop(timeout=1.0, map=self.map, use_poll=True, count=1)
                for server in servers:
                    server.reap()
        except Exception:  # the API stops; the agent and engine go on
            log.exception("fleet API I/O loop failed; the API is down")
        finally:
            self._close_listeners()

    def _close_listeners(self) -> None:
        """Close every connection (waking a worker waiting to write), both listeners and
        their wake-up pipes, and remove the socket file if it is still ours.

        Runs on the loop thread as it ends (or on the constructing thread if it never
        started), while workers and `close()` may pull a trigger: the pipes are closed
        under the wake lock. Connections are closed outside it, since a worker pulls
        while holding its connection's buffer lock, which closing the connection takes."""
        dispatchers = list(self.map.values())
        for dispatcher in dispatchers:
            if isinstance(dispatcher, HTTPChannel):
                try:
                    dispatcher.handle_close()
                except OSError:
                    pass
        with self._wake_lock:
            for dispatcher in dispatchers:
                if not isinstance(dispatcher, HTTPChannel):
                    try:
                        dispatcher.close()
                    except OSError:
                        pass
            self.map.clear()
        if self.inode is not None:
            try:
                st = os.lstat(self.socket_path)
                if self.inode == (st.st_dev, st.st_ino):
                    os.unlink(self.socket_path)
            except FileNotFoundError:
                pass
            self.inode = None

    def close(self, timeout: float = 5.0) -> None:
        if self._closed:
            return
        self._closed = True
        self.closing.set()
        if self._loop is not None:
            self._stopping = True
            self.unix.pull_trigger()  # wake the loop now rather than at its next second
            self._loop.join(timeout)
        else:
            self._close_listeners()
        self.dispatcher.shutdown(cancel_pending=True, timeout=timeout)


def open_files_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


def connection_budget(wanted: int) -> int:
    """Connections the API may hold without starving the rest of fleetd of file
    descriptors (unit logs and pipes, etcd): what the open-files limit allows after a
    reserve, never more than `wanted`."""
    soft = open_files_limit()
    reserve = min(FD_RESERVE, soft // 2)
    return min(wanted, max(16, soft - reserve))


def raise_open_files_limit(needed: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards `needed` (never above the hard limit); returns
    the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return open_files_limit()
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (OSError, ValueError) as err:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, want, err)
            return soft
        log.info("open-files limit raised from %d to %d (hard limit %s)", soft, want,
                 "unlimited" if hard == resource.RLIM_INFINITY else hard)
        return want
    return soft


class _EveryMinute(logging.Filter):
    """Lets one record a minute through (waitress warns of a task queue per request)."""

    def __init__(self) -> None:
        super().__init__()
        self.next = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now < self.next:
            return False
        self.next = now + 60.0
        return True


def _quiet_waitress() -> None:
    """A client that leaves mid-answer is normal, not news: waitress's info records (one
    per disconnected client) stay out of fleetd's log, and its queue-depth warning
    appears at most once a minute."""
    waitress_log = logging.getLogger("waitress")
    if waitress_log.level == logging.NOTSET:
        waitress_log.setLevel(logging.WARNING)
    queue_log = logging.getLogger("waitress.queue")
    if not any(isinstance(f, _EveryMinute) for f in queue_log.filters):
        queue_log.addFilter(_EveryMinute())
