"""Real vagrant-lxc machines for tests: what they need on this host, and a cluster of
them brought up by the real `vagrant` inside a network namespace the test owns.

The box comes from the shared image cache (/var/cache/provision/images: built once,
then only when its recipe changes) and is added to a VAGRANT_HOME of the test's own
(never root's ~/.vagrant.d). The Vagrantfile is a copy in a directory of the test's
own, so no `.vagrant/` lands in the source tree.
"""

from __future__ import annotations

import glob
import ipaddress
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from provision.box.netns import BridgeNetwork, in_namespace, sweep_lxc_cgroups

VAGRANT_LXC_GEMS = "/usr/share/rubygems-integration/all/gems/vagrant-lxc-*"
VAGRANT_TIMEOUT = 1200.0


def vagrant_lxc_problem() -> str | None:
    """Why real vagrant-lxc machines cannot run here (one line), or None."""
    from provision.box.build import box_problem

    if os.geteuid() != 0:
        return f"vagrant-lxc machines need root (uid {os.geteuid()})"
    missing = [f"{tool} ({package})" for tool, package in
               (("vagrant", "vagrant"), ("lxc-start", "lxc"), ("nsenter", "util-linux"),
                ("unshare", "util-linux"), ("ip", "iproute2"), ("ssh", "openssh-client"))
               if shutil.which(tool) is None]
    if not glob.glob(VAGRANT_LXC_GEMS):
        missing.append("the vagrant-lxc plugin (vagrant-lxc)")
    if missing:
        return ("vagrant-lxc machines need " + ", ".join(missing)
                + "; apt-get install vagrant vagrant-lxc lxc mmdebstrap")
    return box_problem("lxc")


@dataclass
class LxcCluster:
    """A rendered cluster whose Vagrant machines run in namespace `network`."""

    directory: Path           # holds the Vagrantfile copy, .vagrant/, out/
    manifest: Path
    network: BridgeNetwork
    env: dict[str, str]
    containers: list[str]
    ssh_config: Path | None = None
    payload_key: str = ""
    tls: object = None  # EtcdTLS: the admin certificate
    logs: list[str] = field(default_factory=list)

    def vagrant(self, *args: str, timeout: float = VAGRANT_TIMEOUT,
                check: bool = True) -> subprocess.CompletedProcess:
        """The real `vagrant ARGS`, inside the namespace, from the cluster's directory."""
        done = subprocess.run(in_namespace(self.network.namespace, ["vagrant", *args]),
                              cwd=self.directory, env=self.env, capture_output=True,
                              text=True, timeout=timeout, check=False,
                              stdin=subprocess.DEVNULL)
        self.logs.append(f"$ vagrant {' '.join(args)} -> {done.returncode}\n{done.stdout}"
                         f"{done.stderr}")
        if check and done.returncode != 0:
            raise AssertionError(f"vagrant {' '.join(args)} failed ({done.returncode}):\n"
                                 f"{done.stdout[-4000:]}\n{done.stderr[-3000:]}")
        return done

    def provision(self, *args: str, timeout: float = VAGRANT_TIMEOUT
                  ) -> subprocess.CompletedProcess:
        """`provision ARGS` inside the namespace, from the cluster's directory (so `out/`
        is there), with this cluster's Vagrantfile (VAGRANT_CWD) and VAGRANT_HOME."""
        env = {k: v for k, v in self.env.items() if k != "PROVISION_MANIFEST"}
        env["VAGRANT_CWD"] = str(self.directory)
        done = subprocess.run(in_namespace(self.network.namespace,
                                           [sys.executable, "-m", "provision.cli", *args]),
                              cwd=self.directory, env=env, capture_output=True, text=True,
                              timeout=timeout, check=False, stdin=subprocess.DEVNULL)
        self.logs.append(f"$ provision {' '.join(args)} -> {done.returncode}\n{done.stdout}"
                         f"{done.stderr}")
        return done

    def in_netns(self, *argv: str, timeout: float = 120.0,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """A command that needs only the namespace's network (ssh, etcdctl, fleetctl)."""
        return subprocess.run(["ip", "netns", "exec", self.network.namespace, *argv],
                              capture_output=True, text=True, timeout=timeout, check=False,
                              stdin=subprocess.DEVNULL, env=env)

    def ssh(self, node: str, command: str, timeout: float = 120.0
            ) -> subprocess.CompletedProcess:
        if self.ssh_config is None:
            config = self.vagrant("ssh-config").stdout
            self.ssh_config = self.directory / "ssh-config"
            self.ssh_config.write_text(config)
        return self.in_netns("ssh", "-F", str(self.ssh_config), node, command,
                             timeout=timeout)

    def lxc_ls(self) -> list[str]:
        done = self.in_netns("lxc-ls", "-1")
        return done.stdout.split()

    def leftovers(self) -> dict[str, list[str]]:
        """What of this cluster is still on the host."""
        return {
            "containers": [c for c in self.lxc_ls() if c in self.containers],
            "lxc dirs": [c for c in self.containers if Path("/var/lib/lxc", c).exists()],
            "links": [link for link in self.network.links()
                      if link not in ("lo", self.network.bridge)],
        }

    def teardown(self) -> None:
        """Whatever is left goes: machines (vagrant, then lxc itself), the namespace with
        its bridge, LXC's empty cgroups, the directory."""
        if self.network.exists():
            if any(self.leftovers().values()):
                self.vagrant("destroy", "-f", check=False)
            for name in self.containers:
                if Path("/var/lib/lxc", name).exists():
                    subprocess.run(in_namespace(self.network.namespace,
                                                ["lxc-destroy", "--force", "-n", name]),
                                   capture_output=True, check=False, timeout=300)
            self.network.delete()
        sweep_lxc_cgroups()
        shutil.rmtree(self.directory, ignore_errors=True)


def lxc_cluster(directory: Path, manifest: Path, vagrantfile: Path, namespace: str,
                vagrant_home: Path) -> LxcCluster:
    """Namespace + bridge for the rendered cluster (its gateway on the bridge) and a copy
    of the Vagrantfile beside it. Nothing is booted yet."""
    import json

    data = json.loads(manifest.read_text())
    settings = data["vagrant"]
    cidr = ipaddress.ip_network(data["network"])
    gateway = settings["lxc"]["gateway"] or str(cidr.network_address + 1)
    network = BridgeNetwork(namespace, settings["lxc"]["bridge"],
                            ipaddress.ip_interface(f"{gateway}/{cidr.prefixlen}"))
    shutil.copy(vagrantfile, directory / "Vagrantfile")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAGRANT_", "PROVISION_"))}
    env.update(VAGRANT_HOME=str(vagrant_home), VAGRANT_CHECKPOINT_DISABLE="1",
               VAGRANT_NO_COLOR="1", PROVISION_MANIFEST=str(manifest))
    cluster = LxcCluster(directory, manifest, network, env,
                         [n["vagrant"]["lxc_container"] for n in data["nodes"]])
    network.create()
    return cluster
