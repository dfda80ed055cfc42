"""The nspawn cluster's SSH access files (the real thing: tests/integration/
test_nspawn_cluster.py): the cluster's key, ssh_config, known_hosts, and the relay its
ProxyCommand runs inside the namespace (here on loopback, without the namespace)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading

import pytest

from provision.providers.nspawn import ssh


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen is not installed")
def test_the_clusters_key_is_made_once_private_and_kept(tmp_path):
    public = ssh.ensure_key(tmp_path, "c1")
    assert public is not None and public.startswith("ssh-ed25519 ")
    assert public.endswith(" provision-nspawn-c1")
    key = tmp_path / "ssh" / "id_ed25519"
    assert key.stat().st_mode & 0o777 == 0o600
    assert ssh.ensure_key(tmp_path, "c1") == public  # the same key at every `up`
    assert sorted(p.name for p in (tmp_path / "ssh").iterdir()) == ["id_ed25519",
                                                                    "id_ed25519.pub"]


def test_config_names_each_machine_by_name_and_address_with_the_key_and_the_proxy(tmp_path):
    text = ssh.config_text(tmp_path / "k", tmp_path / "p", [("core-01", "172.17.8.101"),
                                                           ("core-02", "172.17.8.102")])
    blocks = [b.strip().splitlines() for b in text.split("Host ")[1:]]
    assert [b[0] for b in blocks] == ["core-01 172.17.8.101", "core-02 172.17.8.102"]
    assert [line.strip() for line in blocks[1][1:]] == [
        "HostName 172.17.8.102", "User core", f'IdentityFile "{tmp_path}/k"',
        "IdentitiesOnly yes", f'ProxyCommand "{tmp_path}/p" %h %p']


def test_known_hosts_lists_each_host_key_under_its_address():
    assert ssh.known_hosts_text([("172.17.8.101", "ssh-ed25519 AAAA root@x\n"),
                                 ("172.17.8.101", "ecdsa-sha2-nistp256 BBBB"),
                                 ("172.17.8.102", "garbage")]) == (
        "172.17.8.101 ssh-ed25519 AAAA\n172.17.8.101 ecdsa-sha2-nistp256 BBBB\n")


def test_the_proxys_relay_carries_both_directions_to_the_end(tmp_path):
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    got = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
            got.append(data)
            conn.sendall(b"answer:" + data[::-1])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    text = ssh.proxy_text(tmp_path / "netns", sys.executable)
    relay = text.split(" -c '", 1)[1].rsplit("' \"$1\"", 1)[0]
    payload = b"x" * 200_000 + b"end"
    done = subprocess.run([sys.executable, "-c", relay, "127.0.0.1", str(port)],
                          input=payload, capture_output=True, timeout=60, check=False)
    thread.join(10)
    server.close()
    assert done.returncode == 0, done.stderr
    assert got == [payload]
    assert done.stdout == b"answer:" + payload[::-1]
    assert text.startswith("#!/bin/sh\n")
    assert f"exec nsenter --net={tmp_path}/netns -- {sys.executable} -c '" in text
