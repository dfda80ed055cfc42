"""etcd discovery for local clusters: the size key, and a small token service.

- custom: the discovery node runs a standalone etcd with the v2 API; before any
  member starts, `write_size` stores `<url>/_config/size` through the v2 keys
  API (the step the CoreOS docs do by hand with curl).
- token: members use the token URL as is. `LocalDiscoveryService` is a
  discovery.etcd.io stand-in on 127.0.0.1 for tests and offline use: a real etcd
  (v2 API on) holds the keyspace, and `GET /new?size=N` creates
  `/v2/keys/discovery/<uuid>/_config/size` and answers with the token URL.

    python -m provision.providers.local.discovery [--host 127.0.0.1] [--port 0]
"""

from __future__ import annotations

import argparse
import http.server
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from provision.errors import OperationFailed

REQUEST_TIMEOUT_S = 3.0


def put_key(key_url: str, value: str, timeout: float = REQUEST_TIMEOUT_S) -> None:
    """PUT one value through etcd's v2 keys API (urllib errors propagate)."""
    body = urllib.parse.urlencode({"value": value}).encode()
    request = urllib.request.Request(key_url, data=body, method="PUT", headers={
        "Content-Type": "application/x-www-form-urlencoded", "User-Agent": "provision"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        response.read()


def write_size(discovery_url: str, size: int, deadline: float) -> None:
    """Store the cluster size under the discovery URL, retrying until `deadline` (monotonic)."""
    key_url = discovery_url.rstrip("/") + "/_config/size"
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            put_key(key_url, str(size))
            return
        except (urllib.error.URLError, OSError) as err:
            last = err
            time.sleep(0.1)
    raise OperationFailed(f"cannot write the discovery size to {key_url}: {last}; is the "
                          "discovery etcd up with the v2 API (--enable-v2)?")


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class LocalDiscoveryService:
    """A token discovery service backed by a real etcd's v2 keyspace."""

    def __init__(self, etcd_bin: str, host: str = "127.0.0.1", port: int = 0,
                 data_dir: Path | None = None) -> None:
        self.etcd_bin = etcd_bin
        self.host = host
        self.port = port
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="provision-discovery-"))
        self.etcd_port = _free_port(host)
        self.peer_port = _free_port(host)
        self.process: subprocess.Popen | None = None
        self.server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def etcd_url(self) -> str:
        return f"http://{self.host}:{self.etcd_port}"

    @property
    def url(self) -> str:
        """The service URL to put in `etcd.discovery.service`."""
        assert self.server is not None
        return f"http://{self.host}:{self.server.server_address[1]}"

    def new_token(self, size: int) -> str:
        token_url = f"{self.etcd_url}/v2/keys/discovery/{uuid.uuid4().hex}"
        put_key(token_url + "/_config/size", str(size))
        return token_url

    def start(self, timeout: float = 20.0) -> LocalDiscoveryService:
        peer = f"http://{self.host}:{self.peer_port}"
        log = open(self.data_dir / "etcd.log", "ab")  # owned by the child
        try:
            self.process = subprocess.Popen(
                [self.etcd_bin, "--name", "discovery", "--data-dir", str(self.data_dir / "data"),
                 "--listen-client-urls", self.etcd_url, "--advertise-client-urls", self.etcd_url,
                 "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                 "--initial-cluster", f"discovery={peer}", "--enable-v2=true",
                 "--log-level", "error"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                put_key(f"{self.etcd_url}/v2/keys/discovery/_ready", "1", timeout=1)
                break
            except (urllib.error.URLError, OSError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise OperationFailed("the discovery etcd did not start; see "
                                          f"{self.data_dir / 'etcd.log'}") from None
                time.sleep(0.05)
        self.server = http.server.ThreadingHTTPServer((self.host, self.port), self._handler())
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                        name="discovery-service")
        self._thread.start()
        return self

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server names the method
                parts = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(parts.query)
                if parts.path.rstrip("/") != "/new":
                    return self._answer(404, "not found: try /new?size=N\n")
                try:
                    size = int(query.get("size", ["3"])[0])
                    if not 1 <= size <= 1000:
                        raise ValueError
                except ValueError:
                    return self._answer(400, "size must be a number from 1 to 1000\n")
                try:
                    return self._answer(200, service.new_token(size))
                except (urllib.error.URLError, OSError) as err:
                    return self._answer(503, f"discovery etcd unavailable: {err}\n")

            def _answer(self, code: int, text: str) -> None:
                data = text.encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> LocalDiscoveryService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    from provision.providers.local.etcdbin import find_etcd

    parser = argparse.ArgumentParser(prog="python -m provision.providers.local.discovery",
                                     description="a local etcd token discovery service")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    with LocalDiscoveryService(find_etcd().etcd, args.host, args.port) as service:
        print(f"discovery service: {service.url}/new?size=N (etcd {service.etcd_url})",
              flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
