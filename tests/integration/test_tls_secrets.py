"""Secrets out of sight: what an unprivileged local user (uid 65534) can see of a running
local cluster — every process's command line (`ps`), every file under the state root and
the rendered `out/` it can open — holds neither the discovery token nor key material.

The state directories are opened up (0755) first, as an operator might: the secrets must be
guarded by their own files (or the node directories `provision` makes), not by a private
temporary directory above them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from provision.providers.local import provider
from provision.providers.local.discovery import LocalDiscoveryService
from provision.providers.local.etcdbin import find_etcd
from tests.integration.test_tls_cluster import SETPRIV

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as uid 65534")

# Runs as uid 65534; the secrets arrive on stdin (an argument would show in its own `ps`).
LOOK = textwrap.dedent("""
    import json, os, sys
    secrets = json.load(sys.stdin)
    roots = sys.argv[1:]
    seen = []

    def check(where, data):
        for name, secret in secrets.items():
            if secret in data:
                seen.append(f"{where}: {name}")

    me = os.getpid()
    processes = environ_readable = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read().decode(errors="replace")
        except OSError:
            continue
        processes += 1
        check(f"ps {entry} {cmdline[:60]!r}", cmdline)
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                check(f"environ {entry}", handle.read().decode(errors="replace"))
                environ_readable += 1
        except OSError:
            pass
    files = 0
    for root in roots:
        for directory, _dirs, names in os.walk(root):
            for name in names:
                path = os.path.join(directory, name)
                if not os.path.isfile(path) or os.path.islink(path):
                    continue
                try:
                    with open(path, "rb") as handle:
                        data = handle.read().decode(errors="replace")
                except OSError:
                    continue
                files += 1
                check(path, data)
    print(json.dumps({"seen": seen, "processes": processes, "files": files}))
""")


def _cluster_processes(state_dir: Path) -> list[int]:
    """The supervisor and every process under it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    found, todo = [], [int((state_dir / "supervisor.pid").read_text())]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def _secrets(state_dir: Path, discovery_url: str) -> dict[str, str]:
    secrets = {"discovery token": discovery_url.rstrip("/").rsplit("/", 1)[1],
               "a private key": "PRIVATE KEY"}
    for key in (state_dir / "pki").glob("*-key.pem"):
        secrets[key.name] = key.read_text().splitlines()[1]  # the key's first base64 line
    return secrets


@pytest.mark.parametrize("mode", ["token", "custom"])
def test_no_process_line_or_readable_file_shows_the_token_or_a_key(env, mode):
    with LocalDiscoveryService(find_etcd().etcd) as service:
        if mode == "token":
            path, name = env.cluster("local.yaml", units=[], etcd={"discovery": {
                "mode": "token", "service": service.url}})
        else:
            path, name = env.cluster("custom-etcd.yaml", units=[])
        assert env.up(path) == 0
        rendered = subprocess.run([sys.executable, "-m", "provision.cli", "render", str(path)],
                                  capture_output=True, text=True, timeout=120, cwd=env.base,
                                  env={**os.environ, "PROVISION_STATE": str(env.state_root)})
        assert rendered.returncode == 0, rendered.stderr
        state_dir = env.state_dir(name)
        manifest = json.loads((state_dir / "rendered" / "manifest.json").read_text())
        url = manifest["etcd"]["discovery"]["url"]
        assert "/v2/keys/discovery/" in url
        secrets = _secrets(state_dir, url)
        assert len(secrets) > 10  # the CA's, the admin's and three per node
        # What `provision` itself prints names neither.
        shown = rendered.stdout + rendered.stderr
        assert [n for n, secret in secrets.items() if secret in shown] == []
        out = env.base / "out"
        assert (out / name / "user-data-2").is_file()
        for directory in (env.base, env.state_root, state_dir, out, out / name):
            os.chmod(directory, 0o755)
        # The processes themselves are given the secrets: the test is not vacuous.
        etcds = [pid for pid in _cluster_processes(state_dir)
                 if "etcd" in Path(f"/proc/{pid}/comm").read_text()]
        assert etcds
        members = [pid for pid in etcds if b"ETCD_DISCOVERY=" + url.encode()
                   in Path(f"/proc/{pid}/environ").read_bytes()]
        assert len(members) == 3  # the discovery node of `custom` runs a plain etcd

        looked = subprocess.run([*SETPRIV, sys.executable, "-I", "-c", LOOK, str(env.base)],
                                input=json.dumps(secrets), capture_output=True, text=True,
                                timeout=120, cwd="/", env={"PATH": os.environ["PATH"]})
        assert looked.returncode == 0, looked.stderr[-2000:]
        answer = json.loads(looked.stdout.strip().splitlines()[-1])
        assert answer["seen"] == []
        assert answer["processes"] > len(_cluster_processes(state_dir))
        assert answer["files"] > 0  # it could open the cluster's harmless files
        provider.down(name, purge=True, state_root=env.state_root)
