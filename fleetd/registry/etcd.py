"""The etcd v3 edge: connection with endpoint failover, paginated snapshots,
transactions, leases and resumable watches. Everything above speaks in keys
from `fleetd.registry.keys` and plain values; nothing above imports etcd3.
"""

from __future__ import annotations

import os
import queue
import ssl
import threading
import time
import types
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import urlsplit

import etcd3.etcdrpc
import etcd3.events
import etcd3.exceptions
import etcd3.transactions
import etcd3.utils
import etcd3.watch
import grpc
from etcd3.client import Endpoint, MultiEndpointEtcd3Client, Transactions

# python3-etcd3 0.13's watcher names `six` without importing it, so when a watch
# stream breaks it dies with NameError instead of telling the callbacks. Supply
# the one function it uses, so a broken stream reaches us as an error.
if not hasattr(etcd3.watch, "six"):
    etcd3.watch.six = types.SimpleNamespace(itervalues=lambda mapping: list(mapping.values()))

PAGE_SIZE = 1000  # keys per range request: stays far below gRPC's 4 MB message cap
RETRY_ENDPOINT_AFTER_S = 0.5
TLS_CHECK_S = 1.0  # how often the certificate files are looked at for a replacement
MIN_ATTEMPT_S = 0.05  # the shortest attempt a retry gets, however close the deadline
TXN_READS = 128  # reads per read-only transaction: etcd's default --max-txn-ops


class RegistryUnavailable(Exception):
    """etcd cannot be reached (all endpoints failed within the deadline)."""


class LeaseGone(Exception):
    """A write named a lease etcd no longer has: it expired, or it was revoked (fenced)."""


class WatchCompacted(Exception):
    """The watch's start revision was compacted: rebuild from a fresh snapshot."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted at {compact_revision}")
        self.compact_revision = compact_revision


@dataclass(frozen=True)
class KV:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int = 0
    lease: int = 0


class Event(NamedTuple):
    """One change a watch saw. (A tuple, not a dataclass: an engine writing 10,000
    assignments receives as many of these back while it works.)"""

    key: str
    value: bytes | None  # None: deleted
    revision: int
    lease: int = 0  # the lease a put was written under


@dataclass(frozen=True)
class EtcdTLS:
    """Mutual TLS to etcd: the CA that signed the members' certificates and this client's
    certificate and key (PEM files)."""

    ca_file: str
    cert_file: str
    key_file: str

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(_read(self.ca_file), _read(self.key_file),
                                            _read(self.cert_file))

    def stamp(self) -> tuple:
        """What changes when any of the files is replaced (OSError when one is missing)."""
        return tuple((s.st_ino, s.st_mtime_ns, s.st_size) for s in
                     (os.stat(p) for p in (self.ca_file, self.cert_file, self.key_file)))

    def complete(self) -> bool:
        """Whether the certificate and key on disk belong together (not halfway through a
        replacement: the certificate written, its key not yet)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
            context.load_verify_locations(self.ca_file)
        except (OSError, ssl.SSLError, ValueError):
            return False
        return True


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def parse_endpoints(urls: Iterable[str]) -> list[tuple[str, int]]:
    endpoints = []
    for url in urls:
        url = url.strip()
        if not url:
            continue
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"etcd endpoint {url!r} is not http://host:port")
        endpoints.append((parts.hostname, parts.port or 2379))
    if not endpoints:
        raise ValueError("no etcd endpoint given")
    return endpoints


_TRANSIENT = (etcd3.exceptions.ConnectionFailedError, etcd3.exceptions.ConnectionTimeoutError,
              etcd3.exceptions.NoServerAvailableError, etcd3.exceptions.InternalServerError,
              grpc.RpcError, ValueError)


_FAILOVER_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def describe(err: BaseException) -> str:
    """One line for an etcd client error: a gRPC error's repr spans several lines and
    repeats itself (users saw dozens of lines per unreachable etcd)."""
    if isinstance(err, grpc.RpcError) and callable(getattr(err, "code", None)):
        details = " ".join(str(err.details() or "").split())
        return f"{err.code().name}: {details}" if details else err.code().name
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
def _lease_not_found(err: grpc.RpcError) -> bool:
    try:
        return (err.code() == grpc.StatusCode.NOT_FOUND
                and "lease not found" in (err.details() or ""))
    except AttributeError:  # an RpcError without call details
        return False


def prefix_end(prefix: str) -> bytes:
    """The end of the key range of every key starting with `prefix`."""
    return etcd3.utils.prefix_range_end(etcd3.utils.to_bytes(prefix))


class Txn:
    """One transaction being filled, held as etcd's own request: guarded by `compare`
    (built with `Etcd.ops`), each operation written straight into the request. (etcd3
    builds a message per operation and copies it in: nine tenths of this client's work
    for a transaction of 128 puts.)"""

    __slots__ = ("request", "size", "_success")

    def __init__(self, compare: Iterable = ()) -> None:
        self.request = etcd3.etcdrpc.TxnRequest(compare=[c.build_message() for c in compare])
        self._success = self.request.success
        self.size = 0  # operations on success

    def put(self, key: str, value: bytes, lease: int = 0) -> None:
        request = self._success.add().request_put
        request.key = key.encode()
        request.value = value
        if lease:
            request.lease = lease
        self.size += 1

    def add(self, op: object) -> None:
        """An operation built with `Etcd.ops` (a put or a delete)."""
        _add_op(self._success, op)
        self.size += 1


def _add_op(requests, op: object) -> None:  # a repeated RequestOp field
    if isinstance(op, etcd3.transactions.Put):
        put = requests.add().request_put
        put.key = etcd3.utils.to_bytes(op.key)
        put.value = etcd3.utils.to_bytes(op.value)
        if op.lease:
            put.lease = etcd3.utils.lease_to_id(op.lease)
        if op.prev_kv:
            put.prev_kv = True
    elif isinstance(op, etcd3.transactions.Delete):
        delete = requests.add().request_delete_range
        delete.key = etcd3.utils.to_bytes(op.key)
        if op.range_end is not None:
            delete.range_end = etcd3.utils.to_bytes(op.range_end)
        if op.prev_kv:
            delete.prev_kv = True
    else:
        raise TypeError(f"not a put or a delete: {op!r}")


class SentTxn:
    """A transaction on its way (`Etcd.send`)."""

    def __init__(self, etcd: Etcd, txn: Txn, future: grpc.Future | None,
                 endpoint: Endpoint | None) -> None:
        self._etcd = etcd
        self._txn = txn
        self._future = future
        self._endpoint = endpoint  # where it went

    def succeeded(self) -> bool:
        """Whether its compares held (it was committed); waits for etcd's answer. A failed
        attempt is sent again as `Etcd.commit` sends one (failover, retries until the
        deadline, LeaseGone, RegistryUnavailable)."""
        if self._future is not None:
            try:
                return bool(self._future.result().succeeded)
            except grpc.RpcError as err:
                if _lease_not_found(err):
                    raise LeaseGone(err.details()) from err
                self._etcd._fail_over(err, self._endpoint)
        return self._etcd.commit(self._txn)

    def cancel(self) -> None:
        """Stop waiting for it (it may still be committed)."""
        if self._future is not None:
            self._future.cancel()


def _event(event: etcd3.events.Event) -> Event:
    # The wrapped protobuf's fields read directly: each read through etcd3's wrapper is a
    # __getattr__ call.
    kv = event._event.kv
    if isinstance(event, etcd3.events.DeleteEvent):
        return Event(kv.key.decode(), None, kv.mod_revision)
    return Event(kv.key.decode(), kv.value, kv.mod_revision, kv.lease)


class Etcd:
    """A thin, counted, retrying wrapper of one etcd3 client."""

    def __init__(self, urls: Sequence[str], timeout: float = 5.0,
                 tls: EtcdTLS | None = None) -> None:
        """`tls`: connect with these certificates (every endpoint: etcd asks for them on
        https URLs); None: plain http, and an https URL is refused (no certificate)."""
        if tls is None and any(str(u).strip().startswith("https://") for u in urls):
            raise ValueError("https etcd endpoints need a CA file, a certificate and a key "
                             "(etcd_cafile, etcd_certfile, etcd_keyfile)")
        self._tls = tls
        self._tls_stamp = tls.stamp() if tls is not None else None
        self._tls_checked = time.monotonic()
        self._tls_lock = threading.Lock()
        self.tls_reloads = 0  # certificate files taken up again (tests read it)
        creds = tls.credentials() if tls is not None else None
        endpoints = [Endpoint(host, port, secure=creds is not None, creds=creds,
                              time_retry=RETRY_ENDPOINT_AFTER_S)
                     for host, port in parse_endpoints(urls)]
        self.client = MultiEndpointEtcd3Client(endpoints=endpoints, timeout=timeout,
                                                     failover=True)
        # python3-etcd3 starts on a random endpoint. fleetd lists its own node's member
        # first: started elsewhere, it would lose its watches whenever that other node
        # stops. (Failover then takes the first endpoint that has not failed.)
        self.client._current_endpoint_label = endpoints[0].netloc
        self.timeout = timeout
        self.requests = 0  # every RPC sent; benchmarks and tests read it
        self.keys_read = 0  # keys returned by reads; tests check what a read touches
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the client without ever blocking on a wedged watch stream: python3-etcd3's
        own Watcher.close puts its end mark into the stream's request queue (it holds 10)
        under the watcher's lock, which waits for good once nobody reads that queue, and
        keeps the process from exiting. Closing the channels ends the stream anyway."""
        watcher = self.client._stubs.pop("watcher", None)
        if watcher is not None and watcher._lock.acquire(timeout=1.0):
            try:
                if watcher._callback_thread and not watcher._stopping:
                    watcher._request_queue.put_nowait(None)
            except queue.Full:
                pass
            finally:
                watcher._lock.release()
        self.client.close()

    def _follow_tls_files(self) -> None:
        """Take up replaced certificate files (`provision certs rotate` rolls new ones into
        place while we run): at most every TLS_CHECK_S, and only once the certificate and
        key match. New connections to every endpoint then show the new certificate and the
        old ones are closed, so none lives on with a retired certificate (etcd refuses
        those once their serials are in its revocation list). Watches end as on a failover
        and are made again by their owners."""
        tls = self._tls
        if tls is None or time.monotonic() - self._tls_checked < TLS_CHECK_S:
            return
        if not self._tls_lock.acquire(blocking=False):
            return  # another thread is looking
        try:
            self._tls_checked = time.monotonic()
            try:
                stamp = tls.stamp()
            except OSError:
                return
            if stamp == self._tls_stamp or not tls.complete():
                return
            creds = tls.credentials()
            with self._lock:
                for endpoint in self.client.endpoints.values():
                    old = endpoint.channel
                    endpoint.credentials = creds
                    endpoint.channel = endpoint._mkchannel(None)
                    old.close()
                self.client._clear_old_stubs()
            self._tls_stamp = stamp
            self.tls_reloads += 1
        finally:
            self._tls_lock.release()

    def _call(self, action: Callable, deadline_s: float | None = None, *,
              budgeted: bool = False):
        """Run `action` until it succeeds or the deadline (the client timeout unless given)
        passes, retrying transient failures. `budgeted`: `action` takes the seconds its
        attempt may last, which is never beyond the deadline. (A retry after a fast failure,
        as when the endpoint is marked failed, would otherwise wait a whole timeout of its
        own: an API request then took up to twice the etcd timeout to answer 503.)"""
        deadline = time.monotonic() + (self.timeout if deadline_s is None else deadline_s)
        delay = 0.05
        while True:
            self._follow_tls_files()
            self.requests += 1
            try:
                if budgeted:
                    return action(min(self.timeout,
                                      max(MIN_ATTEMPT_S, deadline - time.monotonic())))
                return action()
            except _TRANSIENT as err:
                if isinstance(err, grpc.RpcError):
                    if _lease_not_found(err):
                        raise LeaseGone(err.details()) from err
                    self._fail_over(err)
                if time.monotonic() + delay > deadline:
                    raise RegistryUnavailable(f"etcd unreachable: {describe(err)}") from err
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def _fail_over(self, err: grpc.RpcError, endpoint: Endpoint | None = None) -> None:
        """Raw stub calls (the paginated reads) bypass etcd3's own failover, which would
        otherwise retry a dead member until the deadline: mark it failed, as etcd3 does.
        `endpoint`: the one the call went to, when the client may have moved on since (a
        call answered later: not the endpoint now in use)."""
        if err.code() not in _FAILOVER_CODES:
            return
        with self._lock:
            if endpoint is None:
                endpoint = self.client.endpoint_in_use
            elif endpoint is not self.client.endpoint_in_use:
                if not endpoint.is_failed():
                    endpoint.fail()  # (no stub of it is in use any more)
                return
            if endpoint is not None and not endpoint.is_failed():
                endpoint.fail()
                self.client._clear_old_stubs()

    # -- reads -----------------------------------------------------------------------------------
    def get(self, key: str) -> KV | None:
        client = self.client
        response = self._call(lambda budget: client.kvstub.Range(
            client._build_get_range_request(key), budget, credentials=client.call_credentials,
            metadata=client.metadata), budgeted=True)
        if not response.kvs:
            return None
        self.keys_read += 1
        kv = response.kvs[0]
        return KV(key, kv.value, kv.mod_revision, kv.create_revision, kv.lease)

    def snapshot(self, prefix: str, revision: int | None = None) -> tuple[int, list[KV]]:
        """All keys under `prefix` at one revision, read in pages; returns (revision, kvs)."""
        end = etcd3.utils.prefix_range_end(etcd3.utils.to_bytes(prefix))
        start = etcd3.utils.to_bytes(prefix)
        found: list[KV] = []
        while True:
            response = self._call(lambda budget, s=start, r=revision: self.client.kvstub.Range(
                self.client._build_get_range_request(s, range_end=end, limit=PAGE_SIZE,
                                                     revision=r, sort_order="ascend"),
                budget, credentials=self.client.call_credentials,
                metadata=self.client.metadata), budgeted=True)
            if revision is None:
                revision = response.header.revision
            for kv in response.kvs:
                found.append(KV(kv.key.decode(), kv.value, kv.mod_revision, kv.create_revision,
                                kv.lease))
            self.keys_read += len(response.kvs)
            if not response.more or not response.kvs:
                return revision, found
            start = response.kvs[-1].key + b"\0"

    def range(self, start: str | bytes, end: str | bytes, limit: int,
              revision: int | None = None) -> tuple[int, list[KV], bool]:
        """At most `limit` keys in [start, end) in key order, at one revision (the current one
        if None): (revision, kvs, more). One request, whatever the size of the store."""
        start_b, end_b = etcd3.utils.to_bytes(start), etcd3.utils.to_bytes(end)
        response = self._call(lambda: self.client.kvstub.Range(
            self.client._build_get_range_request(start_b, range_end=end_b, limit=limit,
                                                 revision=revision, sort_order="ascend"),
            self.timeout, credentials=self.client.call_credentials,
            metadata=self.client.metadata))
        kvs = [KV(kv.key.decode(), kv.value, kv.mod_revision, kv.create_revision, kv.lease)
               for kv in response.kvs]
        self.keys_read += len(kvs)
        return (revision if revision is not None else response.header.revision, kvs,
                bool(response.more))

    def ranges(self, specs: Sequence[tuple[str | bytes, str | bytes | None, int]],
               revision: int | None = None) -> tuple[int, list[tuple[list[KV], bool]]]:
        """Several reads at ONE revision in one round trip (a read-only transaction; one per
        `TXN_READS` of them): each spec is (start, end, limit), end None for the single key
        `start`, limit 0 for no limit. Returns (revision, [(kvs, more) per spec])."""
        found: list[tuple[list[KV], bool]] = []
        if not specs:
            return (revision if revision is not None else self.revision()), found
        for first in range(0, len(specs), TXN_READS):
            chunk = specs[first:first + TXN_READS]
            requests = []
            for start, end, limit in chunk:
                request = etcd3.etcdrpc.RangeRequest(key=etcd3.utils.to_bytes(start),
                                                     limit=limit, revision=revision or 0)
                if end is not None:
                    request.range_end = etcd3.utils.to_bytes(end)
                requests.append(etcd3.etcdrpc.RequestOp(request_range=request))
            response = self._call(lambda budget, r=requests, c=self.client: c.kvstub.Txn(
                etcd3.etcdrpc.TxnRequest(success=r), budget,
                credentials=c.call_credentials, metadata=c.metadata), budgeted=True)
            if revision is None:
                revision = response.header.revision
            for item in response.responses:
                result = item.response_range
                kvs = [KV(kv.key.decode(), kv.value, kv.mod_revision, kv.create_revision,
                          kv.lease) for kv in result.kvs]
                self.keys_read += len(kvs)
                found.append((kvs, bool(result.more)))
        assert revision is not None
        return revision, found

    def revision(self) -> int:
        """The store's current revision (a count-only read; no data moves)."""
        response = self._call(lambda: self.client.get_response("\0", count_only=True))
        return response.header.revision

    # -- writes ----------------------------------------------------------------------------------
    def put(self, key: str, value: bytes | str, lease: int | None = None,
            attempt_timeout: float | None = None) -> None:
        """`attempt_timeout`: give up on one attempt sooner and try again (a write caught by
        a raft leader change is dropped by etcd and only fails at its deadline; a fresh
        attempt lands as soon as the new leader is elected)."""
        if attempt_timeout is None:
            self._call(lambda: self.client.put(key, value, lease=lease))
            return
        client = self.client
        self._call(lambda budget: client.kvstub.Put(
            client._build_put_request(key, value, lease=lease), min(attempt_timeout, budget),
            credentials=client.call_credentials, metadata=client.metadata), budgeted=True)

    def delete(self, key: str) -> bool:
        return bool(self._call(lambda: self.client.delete(key)))

    def txn(self, compare: list, success: Iterable, failure: Iterable = ()) -> bool:
        """One transaction; `compare`/`success`/`failure` built with `self.ops`."""
        txn = Txn(compare)
        for op in success:
            txn.add(op)
        for op in failure:
            _add_op(txn.request.failure, op)
        return self.commit(txn)

    def commit(self, txn: Txn) -> bool:
        """Send one transaction and wait for etcd's answer: whether its compares held."""
        client = self.client

        def attempt():
            try:
                return client.kvstub.Txn(txn.request, self.timeout,
                                         credentials=client.call_credentials,
                                         metadata=client.metadata)
            except grpc.RpcError as err:
                # As etcd3's own calls do: the endpoint marked failed, the error mapped.
                client._manage_grpc_errors(err)
                raise
        return bool(self._call(attempt).succeeded)

    def send(self, txn: Txn) -> SentTxn:
        """Send one transaction without waiting for etcd's answer (`SentTxn.succeeded`
        waits): the caller keeps working while etcd commits, with no thread of its own."""
        self._follow_tls_files()
        self.requests += 1
        client = self.client
        try:
            stub = client.kvstub
            endpoint = client.endpoint_in_use
            future = stub.Txn.future(txn.request, self.timeout,
                                     credentials=client.call_credentials,
                                     metadata=client.metadata)
        except grpc.RpcError as err:  # refused before it left: sent again the usual way
            self._fail_over(err)
            endpoint = future = None
        except _TRANSIENT:  # no endpoint to send it to now: the same
            endpoint = future = None
        return SentTxn(self, txn, future, endpoint)

    @property
    def ops(self) -> Transactions:
        return self.client.transactions

    # -- leases ----------------------------------------------------------------------------------
    def grant(self, ttl: int) -> int:
        return self._call(lambda: self.client.lease(ttl)).id

    def keepalive(self, lease_id: int, attempt_timeout: float | None = None) -> int:
        """Refresh a lease; returns its remaining TTL (<= 0: the lease is gone).
        `attempt_timeout`: as for `put`."""
        client = self.client

        def refresh(budget: float) -> int:
            request = etcd3.etcdrpc.LeaseKeepAliveRequest(ID=lease_id)
            for response in client.leasestub.LeaseKeepAlive(
                    iter([request]), min(attempt_timeout or budget, budget),
                    credentials=client.call_credentials, metadata=client.metadata):
                return response.TTL
            return 0
        return self._call(refresh, deadline_s=self.timeout, budgeted=True)

    def revoke(self, lease_id: int) -> None:
        """Best effort (shutdown): the lease expires by itself if etcd cannot be reached."""
        try:
            self.fence(lease_id, deadline_s=1.0)
        except RegistryUnavailable:
            pass

    def fence(self, lease_id: int, deadline_s: float | None = None) -> None:
        """Revoke a lease and know it is gone (a lease etcd no longer has counts as gone):
        every key it held is deleted and no write can name it again.
        Raises RegistryUnavailable when etcd could not confirm it."""
        try:
            self._call(lambda: self.client.revoke_lease(lease_id), deadline_s=deadline_s)
        except LeaseGone:
            pass

    # -- watches ---------------------------------------------------------------------------------
    def watch(self, prefix: str, start_revision: int,
              sink: queue.Queue) -> Callable[[], None]:
        """Stream events under `prefix` (every key of the store for "") from `start_revision`
        into `sink` as lists of Event; a stream failure puts the exception instead. Returns a
        cancel function.

        The client multiplexes every watch on one stream per endpoint, numbers watches per
        stream from 0, starts a new stream after a failure or failover, and its own
        cancel_watch asks whichever stream is current: cancelling an old watch that way can
        silently end another thread's new watch that got the same number. So a watch is
        cancelled on the watcher that made it, and only while that number is still ours."""
        cancelled = threading.Event()

        def deliver(response) -> None:
            if cancelled.is_set():
                return
            if response is None:  # the stream ended without an error (client failed over)
                sink.put(RegistryUnavailable("watch stream closed"))
            elif isinstance(response, etcd3.exceptions.RevisionCompactedError):
                sink.put(WatchCompacted(response.compacted_revision))
            elif isinstance(response, BaseException):
                sink.put(RegistryUnavailable(f"watch stream broke: {describe(response)}"))
            else:
                sink.put([_event(e) for e in response.events])

        self._follow_tls_files()
        self.requests += 1
        key = etcd3.utils.to_bytes(prefix)
        # etcd's "every key from key on" is a range end of "\0"
        key, end = (key, etcd3.utils.prefix_range_end(key)) if key else (b"\0", b"\0")
        try:
            watcher = self.client.watcher
            watch_id = watcher.add_callback(key, deliver, range_end=end,
                                            start_revision=start_revision)
        except etcd3.exceptions.RevisionCompactedError as err:
            raise WatchCompacted(err.compacted_revision) from err
        except (*_TRANSIENT, etcd3.exceptions.WatchTimedOut, queue.Empty) as err:
            if isinstance(err, grpc.RpcError):
                self._fail_over(err)
            raise RegistryUnavailable(f"cannot watch {prefix}: {describe(err)}") from err

        def cancel() -> None:
            cancelled.set()
            # python3-etcd3 0.13's Watcher.cancel, made conditional on the id still being
            # this watch's, and never blocking: its request queue holds 10 and nobody reads
            # it once a failover closed that watcher, so its own cancel then blocks for good
            # under the watcher's lock, and every watch on that stream goes silent. (Its
            # lock, callback table and request queue are its internals.)
            request = etcd3.etcdrpc.WatchRequest(
                cancel_request=etcd3.etcdrpc.WatchCancelRequest(watch_id=watch_id))
            if not watcher._lock.acquire(timeout=1.0):
                return  # a wedged stream: our callback ignores it from now on anyway
            try:
                if watcher._callbacks.get(watch_id) is deliver:
                    del watcher._callbacks[watch_id]
                    watcher._request_queue.put_nowait(request)
            except Exception:  # queue full (stream closed) or already gone
                pass
            finally:
                watcher._lock.release()
        return cancel
