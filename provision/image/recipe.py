"""What a machine image is made of, and the keys that name its cached builds (pure).

An image is built in two layers, each cached under its own key:

- the *base*: Debian `SUITE` (`VARIANT`) with `PACKAGES`, made fit to boot many machines
  from one tree (no hostname, no machine id, a localhost /etc/hosts, an empty
  resolv.conf, no ssh host keys — each machine makes its own on first boot —
  systemd-networkd on, Debian's etcd.service off). Its key covers the suite, the
  package list and `BASE_FORMAT`; building it takes a minute or more (mmdebstrap).
- the *project layer*: a copy of the base with this project and its dependencies
  installed offline into the venv `VENV` (Debian's python3-gi and python3-pydbus seen
  through `--system-site-packages`), its commands linked into /usr/local/bin and the
  boot unit that applies the machine's user-data enabled. Its key adds the project's
  version, its dependency list and a digest of its source files, so any change to the
  project makes a new image (seconds, not minutes: the base is reused).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

SUITE = "bookworm"
VARIANT = "minbase"
PACKAGES: tuple[str, ...] = (
    "systemd", "systemd-sysv", "dbus", "libpam-systemd",
    # sudo and ssh resolve the machine's own name; myhostname answers for it whatever
    # /etc/hosts says, so a hostname set at boot never makes sudo wait on DNS.
    "libnss-myhostname",
    "etcd-server", "etcd-client",
    "python3", "python3-venv", "python3-pip", "python3-gi", "python3-pydbus",
    "openssh-server", "sudo", "iproute2", "iputils-ping", "ca-certificates",
)
BASE_FORMAT = 1     # bump when the base's build steps change
PROJECT_FORMAT = 1  # bump when the project layer's build steps change

VENV = "/opt/provision"
COMMANDS = ("provision", "fleetd", "fleetctl")  # linked into /usr/local/bin
WHEELS_IN_IMAGE = "/tmp/provision-wheels"      # the wheelhouse while it is installed
DISTRIBUTION = "provision-fleetd"
STAMP = "image.json"  # beside the root file system: what was built, from what

HOSTS = "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n"
# Debian's openssh-server makes host keys when it is installed: every machine booted from
# the image would share them. They are removed; each machine makes its own on first boot
# (or is given them before it boots).
SSH_HOST_KEYS_DROP_IN = ("[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\n"
                         "ExecStartPre=/usr/sbin/sshd -t\n")
SSH_DROP_IN_PATH = "etc/systemd/system/ssh.service.d/10-host-keys.conf"
ENABLE_UNITS = ("systemd-networkd.service",)
# Debian's etcd-server enables etcd.service with `Alias=etcd2.service`; machines run the
# etcd2.service their user-data configures instead (disabling removes the alias too).
DISABLE_UNITS = ("etcd.service",)

# The files of a source checkout that make the project's wheel.
SOURCE_PACKAGES = ("provision", "fleetd")
SOURCE_FILES = ("pyproject.toml", "README.md")
SKIPPED_PARTS = ("__pycache__",)
SKIPPED_SUFFIXES = (".pyc", ".pyo")


def _digest(value: object) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class BaseRecipe:
    """A Debian tree made fit to boot many machines: the machine image's, or another
    built by the same steps (e.g. a Vagrant box's, provision/box/recipe.py)."""

    packages: tuple[str, ...]
    enable: tuple[str, ...] = ENABLE_UNITS
    disable: tuple[str, ...] = DISABLE_UNITS


IMAGE_BASE = BaseRecipe(PACKAGES)


def base_spec(mirror: str, base: BaseRecipe = IMAGE_BASE) -> dict:
    """Everything the base is built from; the mirror is recorded but not part of the key
    (any Debian mirror serves the same suite). The units enabled/disabled appear only
    where they differ from the image's, so the image's key stays what it was."""
    spec = {"suite": SUITE, "variant": VARIANT, "packages": sorted(base.packages),
            "format": BASE_FORMAT, "mirror": mirror}
    if (base.enable, base.disable) != (ENABLE_UNITS, DISABLE_UNITS):
        spec.update(enable=list(base.enable), disable=list(base.disable))
    return spec


def base_key(spec: Mapping) -> str:
    return "base-" + _digest({k: v for k, v in spec.items() if k != "mirror"})


def dependency_key(requirements: Iterable[str], python_tag: str) -> str:
    """The wheelhouse of the project's dependencies, for one Python (e.g. cp311)."""
    return "wheels-" + _digest({"requirements": sorted(requirements), "python": python_tag})


def project_spec(base: str, version: str, requirements: Iterable[str],
                 source_digest: str) -> dict:
    return {"base": base, "version": version, "requirements": sorted(requirements),
            "source": source_digest, "format": PROJECT_FORMAT, "venv": VENV}


def project_key(spec: Mapping) -> str:
    return "image-" + _digest(spec)


def is_source_file(relative: str) -> bool:
    """Whether a file of the checkout (path relative to its root, with /) goes into the
    wheel, and so into the source digest."""
    parts = relative.split("/")
    if len(parts) == 1:
        return relative in SOURCE_FILES
    if parts[0] not in SOURCE_PACKAGES or any(p in SKIPPED_PARTS for p in parts):
        return False
    return not relative.endswith(SKIPPED_SUFFIXES) and not any(p.startswith(".")
                                                               for p in parts)


def source_digest(files: Iterable[tuple[str, bytes]]) -> str:
    """A digest over (relative path, content) of every source file, order-independent."""
    outer = hashlib.sha256()
    for relative, content in sorted(files):
        outer.update(relative.encode() + b"\0")
        outer.update(hashlib.sha256(content).digest())
    return outer.hexdigest()[:16]
