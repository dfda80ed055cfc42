"""Vagrant provider: the top-level `Vagrantfile`, driven through python-vagrant.

The Vagrantfile defines one machine per node of the manifest named by
`$PROVISION_MANIFEST`; this module runs `vagrant` in the directory holding it with
that variable set:

- `up`: `vagrant up NODE` for each node in manifest order, reporting progress; it first
  records the manifest in `out/.last-manifest`, so a plain `vagrant ssh core-01` in that
  directory afterwards means this cluster.
- `status`: one `vagrant status --machine-readable` → one `NodeStatus` per node.
- `down`: `vagrant destroy NODE --force` for each node in reverse order.
- `halt` / `start` one node (`provision node stop|start`): `vagrant halt|up NODE`.
- `provision` / `ssh` one node (`provision certs rotate`): `vagrant provision NODE`,
  `vagrant ssh NODE --command …`.
- `prepare`: before `up`, the lxc box (built and added when missing) and the machines'
  payload beside the manifest.
- `ssh_config`: `vagrant ssh-config`, each `Host` also matching its machine's address
  (what `fleetctl --tunnel` and `fleetctl ssh` connect to).

The Vagrantfile is the one in `$VAGRANT_CWD` (Vagrant's own variable) when set, else
this checkout's.

Vagrant's own output reaches the user: stdout is inherited, stderr is echoed as it comes
and its last lines end up in the `OperationFailed` message (python-vagrant would
otherwise send stderr to /dev/null). python-vagrant is imported only when `vagrant` is
installed (it warns on import otherwise).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, TextIO

from provision.errors import OperationFailed, Problem, UserError
from provision.files import write_atomic
from provision.providers import (
    FAILED,
    READY,
    STARTING,
    STOPPED,
    STOPPING,
    NodeStatus,
    Progress,
    no_progress,
)
from provision.render.manifest import Manifest

REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFEST_ENV = "PROVISION_MANIFEST"
POINTER = Path("out") / ".last-manifest"
NOT_INSTALLED = "vagrant is not installed; apt-get install vagrant (or use provider: local)"
STDERR_TAIL = 12
STDERR_KEPT = 60  # enough for the whole text of one Vagrant error
UNKNOWN = "unknown"

# Vagrant errors a user causes and fixes (their text in Vagrant 2.3's en.yml, by key):
# a box that is missing or cannot be had, a provider plugin not installed or not usable
# here, a machine setting Vagrant refuses, a Vagrantfile that does not load, an unknown
# machine, a machine not running for `vagrant ssh`. They end as one line with Vagrant's
# own text, exit 2; anything else Vagrant fails at (a provisioner, SSH, a crash) stays an
# operation that failed, exit 1.
USER_ERRORS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (key, re.compile(pattern)) for key, pattern in (
        ("box_add_short_not_found", r"^The box '.*' could not be found or"),
        ("box_not_found", r"^The box '.*' does not exist\. Please double check and"),
        ("box_not_found_with_provider", r"^The box '.*' isn't installed for the provider"),
        ("box_not_found_with_provider_and_version",
         r"^The box '.*' \(v.*\) with provider '.*'"),
        ("box_add_no_matching_provider",
         r"^The box you're attempting to add doesn't support the provider"),
        ("box_add_no_matching_version",
         r"^The box you're attempting to add has no available version that"),
        ("box_provider_doesnt_match",
         r"^The box you attempted to add doesn't match the provider you specified"),
        ("provider_not_found", r"^The provider '.*' could not be found, but was requested to"),
        ("provider_not_usable", r"^The provider '.*' that was requested to back the machine"),
        ("config_invalid", r"^There are errors in the configuration of this machine\."),
        ("vagrantfile_load_error", r"^There was an error loading a Vagrantfile\."),
        ("vagrantfile_syntax_error", r"^There is a syntax error in the following Vagrantfile"),
        ("machine_not_found", r"^The machine with the name '.*' was not found configured for"),
        ("plugin_not_installed", r"^The plugin '.*' is not currently installed\."),
        ("vm_not_running", r"^VM must be running to open SSH connection\."),
    ))

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def read_manifest(path: Path | str) -> Manifest:
    """The rendered manifest (a file, or the directory holding it), checked."""
    return Manifest.from_file(path)


class VagrantProvider:
    """`Provider` over the Vagrantfile in `root` (default: this checkout)."""

    name = "vagrant"

    def __init__(self, root: Path | str | None = None, *, env: Mapping[str, str] | None = None,
                 stderr: TextIO | None = None) -> None:
        """`env` is laid over this process's environment for every `vagrant` run
        (e.g. VAGRANT_HOME, VAGRANT_DEFAULT_PROVIDER); Vagrant's stderr is echoed to
        `stderr` (default: sys.stderr at the time of the call)."""
        if root is None:
            root = os.environ.get("VAGRANT_CWD") or REPO_ROOT
        self.root = Path(root).absolute()
        self.extra_env = dict(env or {})
        self.stderr = stderr

    # -- the Provider interface ------------------------------------------------------------

    def up(self, manifest_path: Path | str, progress: Progress = no_progress) -> None:
        manifest = read_manifest(manifest_path)
        session = self._session(manifest)
        self._refuse_foreign_machines(manifest, session.env)
        remember_manifest(manifest.path, self.root)
        for name in manifest.names:
            progress(name, STARTING, f"vagrant up {name}")
            try:
                session.run(f"vagrant up {name}", lambda n=name: session.vagrant.up(vm_name=n))
            except (OperationFailed, UserError) as err:
                progress(name, FAILED, session.last_line or str(err).splitlines()[0])
                raise
            progress(name, READY, "running")

    def status(self, manifest_path: Path | str) -> list[NodeStatus]:
        manifest = read_manifest(manifest_path)
        session = self._session(manifest)
        found = session.run("vagrant status", session.vagrant.status)
        by_name = {s.name: s for s in found}
        result = []
        for node in manifest.nodes:
            seen = by_name.get(node.name)
            state = seen.state if seen and seen.state else UNKNOWN
            result.append(NodeStatus(node.name, node.ip, state,
                                     (seen.provider or "") if seen else ""))
        return result

    def down(self, manifest_path: Path | str, purge: bool = False,
             progress: Progress = no_progress) -> None:
        """Destroy every node (all are tried); `purge` also forgets the manifest
        in `out/.last-manifest` when it names this cluster."""
        manifest = read_manifest(manifest_path)
        session = self._session(manifest)
        failures = []
        for name in reversed(manifest.names):
            progress(name, STOPPING, f"vagrant destroy {name} --force")
            try:
                session.run(f"vagrant destroy {name}",
                            lambda n=name: session.vagrant.destroy(vm_name=n))
            except (OperationFailed, UserError) as err:
                progress(name, FAILED, session.last_line or str(err).splitlines()[0])
                failures.append(err)
                continue
            progress(name, STOPPED, "destroyed")
        if failures:
            text = "\n".join(str(err) for err in failures)
            if all(isinstance(err, UserError) for err in failures):
                raise UserError(text)
            raise OperationFailed(text)
        if purge:
            forget_manifest(manifest.path, self.root)

    def halt(self, manifest_path: Path | str, node: str) -> None:
        manifest = read_manifest(manifest_path)
        session = self._session(manifest, node)
        session.run(f"vagrant halt {node}", lambda: session.vagrant.halt(vm_name=node))

    def start(self, manifest_path: Path | str, node: str) -> None:
        manifest = read_manifest(manifest_path)
        session = self._session(manifest, node)
        session.run(f"vagrant up {node}", lambda: session.vagrant.up(vm_name=node))

    def provision(self, manifest_path: Path | str, node: str) -> None:
        """`vagrant provision NODE`: the node's user-data as rendered now (and the payload)
        uploaded again and applied; the applier changes only what differs."""
        manifest = read_manifest(manifest_path)
        session = self._session(manifest, node)
        session.run(f"vagrant provision {node}", lambda: session.vagrant.provision(vm_name=node))

    def ssh(self, manifest_path: Path | str, node: str, command: str) -> str:
        """`vagrant ssh NODE --command COMMAND`: its output."""
        manifest = read_manifest(manifest_path)
        session = self._session(manifest, node)
        return session.run(f"vagrant ssh {node}",
                           lambda: session.vagrant.ssh(vm_name=node, command=command))

    def prepare(self, manifest_path: Path | str, say: Callable[[str], None]) -> None:
        """What `vagrant up` needs on the host: the machines' payload beside the
        manifest and, for lxc machines, the box (built when missing, then added)."""
        from provision.box.build import add_box, ensure_box
        from provision.box.payload import prepare_machines

        manifest = read_manifest(manifest_path)
        if manifest.vagrant.provider == "lxc":
            add_box(ensure_box("lxc", say=say), env={**os.environ, **self.extra_env}, say=say)
        prepare_machines(manifest.path, say=say)

    def ssh_config(self, manifest_path: Path | str) -> str:
        manifest = read_manifest(manifest_path)
        session = self._session(manifest)
        return hosts_by_address(session.run("vagrant ssh-config", session.vagrant.ssh_config))

    # -- helpers for the CLI ---------------------------------------------------------------

    def user_env(self, manifest_path: Path | str) -> dict[str, str]:
        """What to export to run `vagrant ssh NODE` & co. by hand in `root`."""
        return {MANIFEST_ENV: str(read_manifest(manifest_path).path)}

    # -- internals -------------------------------------------------------------------------

    def _session(self, manifest: Manifest, node: str | None = None) -> _Session:
        if node is not None and node not in manifest.names:
            raise UserError(f"{node}: no such node in {manifest.path} (nodes: "
                            f"{', '.join(manifest.names)})")
        env = {**os.environ, **self.extra_env, MANIFEST_ENV: str(manifest.path)}
        if shutil.which("vagrant", path=env.get("PATH", os.defpath)) is None:
            raise UserError(NOT_INSTALLED)
        if not (self.root / "Vagrantfile").is_file():
            raise UserError([Problem(str(self.root / "Vagrantfile"), None, None,
                                     "not found; run provision from its source checkout "
                                     "(the Vagrantfile sits at its top)")])
        return _Session(self.root, env, self.stderr, manifest.path.parent)

    def _refuse_foreign_machines(self, manifest: Manifest, env: Mapping[str, str]) -> None:
        """The Vagrantfile defines one cluster at a time: machines of another cluster
        still created in this directory would be left behind, out of Vagrant's sight."""
        dotfile = self.root / env.get("VAGRANT_DOTFILE_PATH", ".vagrant")
        machines = dotfile / "machines"
        if not machines.is_dir():
            return
        ours = set(manifest.names)
        foreign = sorted(d.name for d in machines.iterdir()
                         if d.name not in ours and any(d.glob("*/id")))
        if foreign:
            listed = ", ".join(foreign[:5]) + (", …" if len(foreign) > 5 else "")
            raise UserError([Problem(str(machines), None, None,
                                     f"VMs of another cluster still exist ({listed}); take "
                                     "that cluster down first (`provision down` with its "
                                     "manifest, or `vagrant destroy`)")])


def hosts_by_address(ssh_config: str) -> str:
    """`vagrant ssh-config` with each `Host NAME` also matching its `HostName` address."""
    blocks: list[list[str]] = []
    for line in ssh_config.splitlines():
        if line.startswith("Host ") or not blocks:
            blocks.append([])
        blocks[-1].append(line)
    out = []
    for block in blocks:
        address = next((line.split(None, 1)[1].strip() for line in block
                        if line.strip().startswith("HostName ")), None)
        head = block[0]
        if head.startswith("Host ") and address and address not in head.split()[1:]:
            head = f"{head.rstrip()} {address}"
        out.extend([head, *block[1:]])
    return "\n".join(out).rstrip("\n") + "\n"


def remember_manifest(manifest_path: Path, root: Path = REPO_ROOT) -> Path:
    """Record `manifest_path` in ROOT/out/.last-manifest, the Vagrantfile's default."""
    pointer = root / POINTER
    pointer.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(pointer, f"{Path(manifest_path).absolute()}\n")
    return pointer


def forget_manifest(manifest_path: Path, root: Path = REPO_ROOT) -> None:
    pointer = root / POINTER
    with contextlib.suppress(OSError):
        if pointer.read_text(encoding="utf-8").strip() == str(Path(manifest_path).absolute()):
            pointer.unlink()


class _Session:
    """One python-vagrant `Vagrant` plus the stderr it produced."""

    def __init__(self, root: Path, env: dict[str, str], sink: TextIO | None,
                 manifest_dir: Path | None = None) -> None:
        import vagrant  # python-vagrant; warns on import when the binary is missing

        self.env = env
        self.manifest_dir = manifest_dir
        self.stderr = _StderrTee(sink)
        self.vagrant = vagrant.Vagrant(root=str(root), env=env, quiet_stdout=False,
                                       quiet_stderr=False, err_cm=self.stderr)

    @property
    def last_line(self) -> str:
        return self.stderr.lines[-1] if self.stderr.lines else ""

    def run(self, what: str, call: Callable[[], object]):
        try:
            return call()
        except subprocess.CalledProcessError as err:
            lines = list(self.stderr.lines)
            lines += [line for line in _machine_readable_errors(err.output) if line not in lines]
            text = user_error_text(lines, self.manifest_dir)
            if text is not None:
                raise UserError(f"{what}: {text}") from None
            raise OperationFailed(self._failure(what, err)) from None
        except FileNotFoundError:
            raise UserError(NOT_INSTALLED) from None
        except RuntimeError as err:  # python-vagrant: executable not found
            if "cannot be found" in str(err):
                raise UserError(NOT_INSTALLED) from None
            raise
        except OSError as err:
            raise OperationFailed(f"{what}: cannot run vagrant: {err}") from None

    def _failure(self, what: str, err: subprocess.CalledProcessError) -> str:
        lines = list(self.stderr.lines)[-STDERR_TAIL:]
        for line in _machine_readable_errors(err.output):
            if line not in lines:
                lines.append(line)
        head = f"{what} failed (exit status {err.returncode})"
        if not lines:
            return f"{head}; Vagrant printed no error (see its output above)"
        return head + ":\n" + "\n".join(f"  {line}" for line in lines[-STDERR_TAIL:])


class _StderrTee:
    """An `err_cm` for python-vagrant: each run's stderr goes through a pipe; every line
    is echoed to the sink as it comes and the last ones are kept for error messages."""

    def __init__(self, sink: TextIO | None) -> None:
        self.sink = sink
        self.lines: deque[str] = deque(maxlen=STDERR_KEPT)

    @contextlib.contextmanager
    def __call__(self) -> Iterator[IO[bytes]]:
        self.lines.clear()
        read_fd, write_fd = os.pipe()
        pump = threading.Thread(target=self._pump, args=(read_fd,), daemon=True,
                                name="vagrant-stderr")
        pump.start()
        writer = os.fdopen(write_fd, "wb", buffering=0)
        try:
            yield writer
        finally:
            writer.close()
            # Vagrant has exited by now; a grandchild keeping the pipe open must not hang us.
            pump.join(timeout=5)

    def _pump(self, read_fd: int) -> None:
        with os.fdopen(read_fd, "rb") as reader:
            for raw in reader:
                text = raw.decode("utf-8", errors="replace")
                sink = self.sink or sys.stderr
                with contextlib.suppress(OSError, ValueError):
                    sink.write(text)
                    sink.flush()
                line = _ANSI.sub("", text).strip()
                if line:
                    self.lines.append(line)


def user_error_text(lines: list[str], manifest_dir: Path | None = None) -> str | None:
    """Vagrant's text of an error the user caused (`USER_ERRORS`), from its first line to
    the end of what Vagrant printed, as one line; or the Vagrantfile's own one-line refusal
    of the manifest (`PATH: what is wrong; render it again`, PATH in `manifest_dir`);
    None for any other failure."""
    for i, line in enumerate(lines):
        if any(pattern.search(line) for _key, pattern in USER_ERRORS):
            return " ".join(" ".join(lines[i:]).split())
    ours = ("Vagrantfile: ",) + ((f"{manifest_dir}/",) if manifest_dir else ())
    if lines and lines[-1].startswith(ours):  # its `abort`: the last thing printed
        return lines[-1]
    return None


def _machine_readable_errors(output: bytes | str | None) -> list[str]:
    """The messages of `error-exit` lines (`vagrant … --machine-readable` prints errors on
    stdout as TIMESTAMP,TARGET,error-exit,CLASS,MESSAGE)."""
    if not output:
        return []
    if isinstance(output, bytes):
        output = output.decode("utf-8", errors="replace")
    found = []
    for row in output.splitlines():
        parts = row.split(",", 4)
        if len(parts) == 5 and parts[2] == "error-exit":
            message = parts[4].replace("%!(VAGRANT_COMMA)", ",").replace("\\n", " ")
            found.append(" ".join(message.split()))
    return found
