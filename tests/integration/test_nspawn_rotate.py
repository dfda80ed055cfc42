"""`provision certs rotate` on a running nspawn cluster: each machine applies its new
user-data in place (the applier, one machine at a time), then the revocation list, then
each member's etcd2 restarts alone. fleetd and the units keep their processes; the old
admin certificate is refused afterwards, the new one works.

Its own module and cluster (booting is the expensive part): the nspawn suite's cluster
is shared by tests that expect it as `up` left it.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.integration.test_nspawn_cluster import UP_TIMEOUT, NspawnCluster, _problem
from tests.support.etcd import wait_for

pytestmark = pytest.mark.skipif(_problem() is not None, reason=str(_problem()))


def _main_pid(cluster: NspawnCluster, node: str, unit: str) -> str:
    return cluster.in_machine(node, "systemctl", "show", "--property", "MainPID", "--value",
                              unit)


def test_rotate_reapplies_each_machine_and_refuses_the_old_certificates():
    from provision.image import ensure_image, hold_image, release_image

    image = ensure_image()
    hold_image(image)
    cluster = NspawnCluster()
    try:
        up = cluster.provision("up", str(cluster.path), "--timeout", str(UP_TIMEOUT),
                               timeout=UP_TIMEOUT + 60)
        assert up.returncode == 0, up.stdout + up.stderr
        from provision.pki import pki_dir

        pki = pki_dir(cluster.name, cluster.state_root)
        old = cluster.base / "old-admin"
        old.mkdir()
        for name in ("ca.pem", "admin.pem", "admin-key.pem"):
            shutil.copy2(pki / name, old / name)
        web = wait_for(lambda: cluster.where("web@1.service"), 60, interval=0.5,
                       message="web@1 active")
        before = {n: {u: _main_pid(cluster, n, u) for u in ("fleet.service", "etcd2.service")}
                  for n in cluster.nodes}
        web_pid = _main_pid(cluster, web, "web@1.service")

        rotated = cluster.provision("certs", "rotate", cluster.name, "--timeout", "120",
                                    timeout=600)
        assert rotated.returncode == 0, rotated.stdout + rotated.stderr
        assert "rolled onto 3 running nodes one at a time" in rotated.stdout
        assert rotated.stderr.splitlines()[-3:] == [
            f"{n}: etcd restarted, serving" for n in cluster.nodes]

        for node in cluster.nodes:
            pids = {u: _main_pid(cluster, node, u) for u in ("fleet.service", "etcd2.service")}
            assert pids["fleet.service"] == before[node]["fleet.service"]  # fleetd went on
            assert pids["etcd2.service"] != before[node]["etcd2.service"]
            assert (cluster.in_machine(node, "cat", "/etc/ssl/etcd/server.pem")
                    == (pki / f"{node}-server.pem").read_text().strip())
        assert cluster.where("web@1.service") == web
        assert _main_pid(cluster, web, "web@1.service") == web_pid
        # The admin certificate from before is refused; the new one works.
        refused = subprocess.run(
            ["ip", "netns", "exec", cluster.namespace, shutil.which("etcdctl") or "etcdctl",
             "--endpoints", "https://172.17.8.101:2379", f"--cacert={old / 'ca.pem'}",
             f"--cert={old / 'admin.pem'}", f"--key={old / 'admin-key.pem'}",
             "--command-timeout=5s", "get", "x"],
            capture_output=True, text=True, timeout=30, env={**cluster.env, "ETCDCTL_API": "3"})
        assert refused.returncode != 0
        assert cluster.etcdctl("get", "x").returncode == 0
        # fleetd works with its new certificate: the machines are still listed.
        rows = cluster.fleetctl("list-machines", "--no-legend").splitlines()
        assert len(rows) == 3
    finally:
        cluster.close()
        release_image(image)
