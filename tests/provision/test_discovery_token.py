"""Token discovery against a real HTTP discovery service on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from provision.render.discovery import mark_spent


class FakeDiscoveryService:
    """A local stand-in for discovery.etcd.io's /new endpoint (real HTTP, real sockets)."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.status = 200
        self.body = None
        self.counter = 0
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server names the method
                service.requests.append(self.path)
                service.counter += 1
                body = service.body if service.body is not None else \
                    f"{service.url}/token{service.counter:04d}abcdef"
                data = body.encode()
                self.send_response(service.status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def service():
    fake = FakeDiscoveryService()
    yield fake
    fake.close()


def token_cluster(cluster_file, service_url: str, count: int = 3):
    return cluster_file(f"""\
        name: tok
        nodes: {{count: {count}}}
        etcd:
          discovery:
            mode: token
            service: {service_url}
        """)


def discovery_url(out):
    return json.loads((out / "manifest.json").read_text())["etcd"]["discovery"]["url"]


def test_token_is_requested_once_cached_and_reused(cluster_file, run_cli, tmp_path, service):
    path = token_cluster(cluster_file, service.url)
    out = tmp_path / "out"
    assert run_cli("render", str(path), "-o", str(out)).code == 0
    assert service.requests == ["/new?size=3"]
    first = discovery_url(out)
    assert first.startswith(service.url)
    cache = json.loads((out / "discovery.json").read_text())
    assert cache["url"] == first and cache["state"] == "fresh"
    assert (out / "discovery.json").stat().st_mode & 0o077 == 0

    assert run_cli("render", str(path), "-o", str(out)).code == 0
    assert len(service.requests) == 1, "a re-render must reuse the cached token"
    assert discovery_url(out) == first


def test_spent_token_is_refused_unless_new_token(cluster_file, run_cli, tmp_path, service):
    path = token_cluster(cluster_file, service.url)
    out = tmp_path / "out"
    assert run_cli("render", str(path), "-o", str(out)).code == 0
    first = discovery_url(out)
    assert mark_spent(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    result = run_cli("render", str(path), "-o", str(out))
    assert result.code == 2
    assert "single-use" in result.err and "--new-token" in result.err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    assert run_cli("render", str(path), "-o", str(out), "--new-token").code == 0
    assert len(service.requests) == 2
    assert discovery_url(out) != first
    assert json.loads((out / "discovery.json").read_text())["state"] == "fresh"


def test_member_count_change_needs_new_token(cluster_file, run_cli, tmp_path, service):
    out = tmp_path / "out"
    assert run_cli("render", str(token_cluster(cluster_file, service.url)), "-o",
                   str(out)).code == 0
    result = run_cli("render", str(token_cluster(cluster_file, service.url, count=5)), "-o",
                     str(out))
    assert result.code == 2
    assert "made for 3 etcd members" in result.err


@pytest.mark.parametrize("status,body,fragment", [
    (200, "<html>hello</html>", "which is not a token URL"),
    (200, "", "which is not a token URL"),
    (500, "boom", "answered HTTP 500"),
    (200, "http://x/" + "a" * 600, "not a token URL"),
], ids=["html", "empty", "http-500", "too-long"])
def test_garbage_answers_are_clear_errors(cluster_file, run_cli, tmp_path, service, status, body,
                                          fragment):
    service.status, service.body = status, body
    out = tmp_path / "out"
    result = run_cli("render", str(token_cluster(cluster_file, service.url)), "-o", str(out))
    assert result.code == 2
    assert fragment in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not out.exists()


def test_unreachable_service_is_a_clear_error(cluster_file, run_cli, tmp_path):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "out"
    result = run_cli("render", str(token_cluster(cluster_file, f"http://127.0.0.1:{port}")),
                     "-o", str(out))
    assert result.code == 2
    assert "cannot reach discovery service" in result.err
    assert "etcd.discovery.url" in result.err
    assert not out.exists()
