"""What `provision up` of an nspawn cluster says when it cannot run: one line, exit 2,
nothing started. Real conditions: an unprivileged user, a PATH without systemd-nspawn,
an image build that fails (a Debian mirror that refuses connections)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CLUSTERS

REPO = Path(__file__).resolve().parents[2]
CLUSTER = str(CLUSTERS / "nspawn.yaml")
NOBODY = 65534


def run(argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 300
        ) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          stdin=subprocess.DEVNULL, env={"PYTHONPATH": str(REPO), **env})


def assert_refused(done: subprocess.CompletedProcess, fragment: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert fragment in last, done.stderr


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to run provision as another user")
def test_not_root(tmp_path):
    tmp_path.chmod(0o777)
    probe = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                            "--", sys.executable, "-c", "import etcd3, jsonschema, provision"],
                           capture_output=True, cwd=tmp_path, check=False)
    if probe.returncode != 0:  # e.g. a Python installed under /root (mode 0700)
        pytest.skip(f"uid {NOBODY} cannot import this Python's packages")
    done = run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
                sys.executable, "-m", "provision.cli", "up", CLUSTER],
               {"PATH": os.environ["PATH"], "HOME": str(tmp_path),
                "PROVISION_STATE": str(tmp_path / "state")}, tmp_path)
    assert_refused(done, f"provider nspawn needs root (you are uid {NOBODY})")
    assert not (tmp_path / "state").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="as root, only a missing tool refuses")
def test_no_systemd_nspawn(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("ip", "nsenter"):
        if shutil.which(tool):
            (bin_dir / tool).symlink_to(shutil.which(tool))
    done = run([sys.executable, "-m", "provision.cli", "up", CLUSTER],
               {"PATH": str(bin_dir), "PROVISION_STATE": str(tmp_path / "state")}, tmp_path)
    assert_refused(done, "systemd-nspawn (Debian: apt-get install systemd-container)")
    assert not (tmp_path / "state").exists()


def _can_build() -> str | None:
    from provision.image.build import image_problem
    from provision.providers.nspawn.provider import requirements_problem

    return requirements_problem() or image_problem()


@pytest.mark.skipif(_can_build() is not None, reason=str(_can_build()))
def test_a_failed_image_build_is_one_line(tmp_path):
    from provision.image.mirror import MIRROR_ENV

    done = run([sys.executable, "-m", "provision.cli", "up", CLUSTER],
               {**os.environ, "PROVISION_STATE": str(tmp_path / "state"),
                "PROVISION_IMAGE_CACHE": str(tmp_path / "images"),
                MIRROR_ENV: "http://127.0.0.1:9/debian"}, tmp_path, timeout=600)
    assert_refused(done, "cannot build the machine image: ")
    assert not (tmp_path / "state" / ".nspawn" / "nspawn").exists()  # nothing started


@pytest.mark.skipif(_can_build() is not None, reason=str(_can_build()))
def test_provider_flag_on_a_loopback_cluster_is_refused(tmp_path):
    done = run([sys.executable, "-m", "provision.cli", "up", "--provider", "nspawn",
                str(CLUSTERS / "local.yaml")],
               {**os.environ, "PROVISION_STATE": str(tmp_path / "state")}, tmp_path)
    assert_refused(done, "nspawn machines need a private network such as 172.17.8.0/24")
    assert not (tmp_path / "state" / ".nspawn").exists()


def _dns_srv_cluster(tmp_path: Path, dns_server: str) -> Path:
    import yaml

    data = yaml.safe_load((CLUSTERS / "nspawn.yaml").read_text())
    data["etcd"]["discovery"] = {"mode": "dns-srv", "domain": "nspawn.test",
                                 "dns_server": dns_server}
    path = tmp_path / "dns.yaml"
    path.write_text(yaml.safe_dump(data))
    shutil.copytree(CLUSTERS / "units", tmp_path / "units")
    return path


@pytest.mark.skipif(os.geteuid() != 0, reason="as root, only a missing tool refuses")
def test_dns_srv_without_dnsmasq(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("ip", "nsenter", "systemd-nspawn"):
        if shutil.which(tool):
            (bin_dir / tool).symlink_to(shutil.which(tool))
    done = run([sys.executable, "-m", "provision.cli", "up",
                str(_dns_srv_cluster(tmp_path, "172.17.8.53"))],
               {"PATH": str(bin_dir), "PROVISION_STATE": str(tmp_path / "state")}, tmp_path)
    if shutil.which("systemd-nspawn") is None:
        pytest.skip("no systemd-nspawn: that is what would be refused")
    assert_refused(done, "dns-srv discovery on nspawn machines needs dnsmasq on the host")
    assert not (tmp_path / "state" / ".nspawn").exists()  # nothing started


@pytest.mark.skipif(os.geteuid() != 0, reason="as root, only a bad address refuses")
def test_dns_srv_server_on_a_nodes_address(tmp_path):
    done = run([sys.executable, "-m", "provision.cli", "up",
                str(_dns_srv_cluster(tmp_path, "172.17.8.102"))],
               {**os.environ, "PROVISION_STATE": str(tmp_path / "state")}, tmp_path)
    if requirements_problem := _can_build():
        pytest.skip(requirements_problem)
    assert_refused(done, "etcd.discovery.dns_server 172.17.8.102 must be a free address")
    assert not (tmp_path / "state" / ".nspawn").exists()  # nothing started
