"""A real machine for tests: the project's machine image (provision/image) booted by
systemd-nspawn (tests/support/systemd_container.py), with helpers to put files into it,
run commands and the applier in it, and read what its systemd did.

The image comes from the shared cache (/var/cache/provision/images); the first session
builds it (a minute or two: mmdebstrap + an offline install), later ones only when the
project's sources changed (seconds). The session holds it so a concurrent build's
pruning never removes it under a running machine.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.systemd_container import (
    SystemdContainer,
    new_container_name,
    start_systemd_container,
    systemd_container_problem,
)

PROVISION = "/usr/local/bin/provision"


def machine_problem() -> str | None:
    from provision.image.build import image_problem

    return systemd_container_problem() or image_problem()


@pytest.fixture(scope="session")
def machine_image():
    """The current machine image (built if the cache lacks it), held for the session."""
    problem = machine_problem()
    if problem:
        pytest.skip(problem)
    from provision.image import ensure_image, hold_image, release_image

    image = ensure_image()
    hold_image(image)
    yield image
    release_image(image)


@dataclass
class Machine:
    container: SystemdContainer

    @property
    def root(self) -> Path:
        return Path(f"/proc/{self.container.pid1}/root")

    def write(self, path: str, text: str, mode: int = 0o600) -> None:
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def run(self, *argv: str, check: bool = True, timeout: float = 60
            ) -> subprocess.CompletedProcess:
        return self.container.run(*argv, check=check, timeout=timeout)

    def out(self, *argv: str) -> str:
        return self.run(*argv).stdout.strip()

    def apply(self, path: str, *args: str) -> subprocess.CompletedProcess:
        """`provision cloudinit --from-file path` as root in the machine (never raises)."""
        return self.run(PROVISION, "cloudinit", "--from-file", path, *args, check=False,
                        timeout=120)

    def manager(self, prop: str) -> str:
        return self.out("systemctl", "show", "--property", prop, "--value")

    def unit(self, unit: str, prop: str) -> str:
        return self.out("systemctl", "show", unit, "--property", prop, "--value")

    def jobs(self) -> int:
        """Jobs systemd installed since boot (every start, stop, restart, reload)."""
        return int(self.manager("NInstalledJobs"))

    def reloads(self) -> int:
        """Daemon reloads since boot (systemd logs "Reloading." for each)."""
        result = self.run("journalctl", "--boot", "--no-pager", "--output", "cat", "_PID=1",
                          "MESSAGE=Reloading.", check=False)
        return sum(1 for line in result.stdout.splitlines() if line.strip() == "Reloading.")

    def stat(self, path: str, fmt: str = "%a %U:%G") -> str:
        return self.out("stat", "--format", fmt, path)

    def mtimes(self, paths) -> dict[str, str]:  # iterable of paths
        return {p: self.stat(p, "%y") for p in paths}


@contextmanager
def booted(image, upper: Path | None = None, timeout: float = 120) -> Iterator[Machine]:
    """A machine booted from `image` (writes to a tmpfs, or to `upper`), stopped after."""
    name = new_container_name()
    units_dir = Path(tempfile.mkdtemp(prefix=f"{name}-units-"))
    try:
        container = start_systemd_container(units_dir, name=name, rootfs=image.rootfs,
                                            upper=upper, timeout=timeout)
        try:
            yield Machine(container)
        finally:
            container.stop()
    finally:
        shutil.rmtree(units_dir, ignore_errors=True)
