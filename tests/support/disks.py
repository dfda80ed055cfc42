"""Real small and read-only filesystems for disk-fault tests (root only).

`SmallDisk` mounts a tmpfs of a given size on a fresh directory; `fill` takes every
free byte with one file (`free` gives bytes back by truncating it). `read_only`
bind-mounts a directory read-only over itself. Everything is unmounted and removed
when the context ends; tests skip with the reason when mounting is not possible.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

FILLER = ".filler"
CHUNK = 1 << 20


def _mount(*argv: str) -> None:
    result = subprocess.run(["mount", *argv], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise OSError(f"mount {' '.join(argv)}: {result.stderr.strip()}")


def _umount(path: Path) -> None:
    for _ in range(50):
        result = subprocess.run(["umount", str(path)], capture_output=True, text=True,
                                timeout=30)
        if result.returncode == 0 or "not mounted" in result.stderr:
            return
        subprocess.run(["sync"], timeout=30)
    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small or read-only filesystem needs root")


class SmallDisk:
    """A tmpfs of `size` bytes at `self.path`."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.path = Path(tempfile.mkdtemp(prefix="pvdisk", dir="/tmp"))

    def __enter__(self) -> SmallDisk:
        require_root()
        try:
            _mount("-t", "tmpfs", "-o", f"size={self.size},mode=0755", "tmpfs", str(self.path))
        except OSError as err:
            os.rmdir(self.path)
            pytest.skip(f"cannot mount a tmpfs: {err}")
        return self

    def __exit__(self, *exc: object) -> None:
        _umount(self.path)
        with contextlib.suppress(OSError):
            os.rmdir(self.path)

    @property
    def filler(self) -> Path:
        return self.path / FILLER

    def available(self) -> int:
        stat = os.statvfs(self.path)
        return stat.f_bavail * stat.f_frsize

    def fill(self, leave: int = 0) -> None:
        """Take every free byte (then give `leave` bytes back)."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            size = CHUNK
            while size >= 512:
                try:
                    os.write(fd, b"\0" * size)
                except OSError:
                    size //= 2
        finally:
            os.close(fd)
        if leave:
            self.free(leave)

    def free(self, amount: int | None = None) -> None:
        """Give back `amount` bytes of the filler (all of it by default)."""
        if amount is None:
            self.filler.unlink(missing_ok=True)
            return
        size = self.filler.stat().st_size
        os.truncate(self.filler, max(0, size - amount))


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """`path` bind-mounted read-only over itself for the duration."""
    require_root()
    try:
        _mount("--bind", str(path), str(path))
    except OSError as err:
        pytest.skip(f"cannot bind-mount: {err}")
    try:
        _mount("-o", "remount,bind,ro", str(path))
        yield path
    finally:
        _umount(path)


def leftovers(root: Path) -> list[str]:
    """Staged files and directories a failed write left behind under `root`."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            if name.endswith((".tmp", "-tmp")) or ".new-" in name or ".old-" in name \
                    or name.startswith(".write-check"):
                found.append(os.path.join(dirpath, name))
    return found
