"""Small files replaced whole, and what to tell the user when the disk says no.

`write_atomic` stages a file beside its target and renames it into place, so a
reader sees the old content or the new, never a torn one; when anything fails
(a full disk, a read-only mount) the staged file is removed and the error names
the target. `disk_error` turns such an OSError into the one line a user gets:
the path, the cause in the kernel's words, what to do, exit status 2.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from provision.errors import Problem, UserError

# Errors that come from the machine's disks rather than from a bug: reported, not raised.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                         errno.EIO})
_ADVICE = {
    errno.ENOSPC: "free some space there and run the command again",
    errno.EDQUOT: "free some space (disk quota) and run the command again",
    errno.EROFS: "the directory must be writable: remount it read-write, or point "
                 "$PROVISION_STATE (or -o) elsewhere",
    errno.EACCES: "the directory must be writable by this user",
    errno.EPERM: "the directory must be writable by this user",
    errno.EIO: "the disk reported an I/O error; check it",
}


def is_disk_error(err: BaseException) -> bool:
    """A write the disk refused: full or read-only anywhere, or a named file we may not
    write (a permission error with no file is more likely a signal or a socket)."""
    if not isinstance(err, OSError) or err.errno not in DISK_ERRNOS:
        return False
    return err.filename is not None or err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def cause(err: OSError) -> str:
    """The kernel's words for an errno, lower-cased: 'no space left on device'."""
    text = err.strerror or os.strerror(err.errno or 0)
    return text[:1].lower() + text[1:]


def disk_error(err: OSError, path: str | Path | None = None) -> UserError:
    """One line for a failed write: `path: cannot write: cause; what to do` (exit 2)."""
    where = str(path if path is not None else (err.filename or "provision"))
    advice = _ADVICE.get(err.errno or 0)
    return UserError([Problem(where, None, None,
                              f"cannot write: {cause(err)}" + (f"; {advice}" if advice else ""))])


def _named(err: OSError, path: Path) -> OSError:
    """The same error, naming the file the caller wanted (not the staged one)."""
    return OSError(err.errno, err.strerror, str(path))


def write_atomic(path: str | Path, data: str | bytes, mode: int | None = None,
                 fsync: bool = False) -> None:
    """Replace `path` with `data` all at once; on failure nothing is left but the old file.

    An OSError raised here names `path`. `mode` (default: 0644 less the umask) is set
    on the staged file; `fsync` makes the content durable before the rename.
    """
    path = Path(path)
    staged = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                     0o644 if mode is None else mode)
    except OSError as err:
        raise _named(err, path) from None
    try:
        try:
            view = memoryview(raw)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if mode is not None:
                os.fchmod(fd, mode)  # the umask may have narrowed it
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)  # may fail too (ENOSPC on a delayed allocation)
        os.replace(staged, path)
    except OSError as err:
        _unlink_quietly(staged)
        raise _named(err, path) from None
    except BaseException:
        _unlink_quietly(staged)
        raise


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def check_writable(directory: str | Path) -> None:
    """Raise the OSError (naming `directory`) a small write there fails with, if any."""
    directory = Path(directory)
    probe = directory / f".write-check.{os.getpid()}"
    try:
        write_atomic(probe, "ok\n")
        probe.unlink()
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(directory)) from None


# -- where a cluster's state lives -------------------------------------------------------------

def default_state_root() -> Path:
    """$PROVISION_STATE, else ~/.local/state/provision: every cluster's state, PKI included."""
    override = os.environ.get("PROVISION_STATE")
    return Path(override) if override else Path.home() / ".local" / "state" / "provision"


def cluster_state_dir(name: str, state_root: str | Path | None = None) -> Path:
    root = Path(state_root) if state_root is not None else default_state_root()
    return (root / name).resolve()
