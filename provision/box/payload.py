"""What every Vagrant machine installs offline, prepared on the host before `vagrant up`.

`prepare_machines(manifest)` is the seam a provider calls before `vagrant up`: it makes
sure the payload exists (`ensure_payload`) and puts it where the rendered manifest says
(`vagrant.payload`, beside manifest.json), where the Vagrantfile uploads it into every
machine with the node's user-data and runs its install-machine.sh as root.

A payload is one uncompressed tar (its parts are compressed already):

    KEY                  the payload's key (the machine skips reinstalling the same one)
    install-machine.sh   installs the rest and applies the user-data (provision/box/)
    wheels/              this project's wheel (built from a clean copy of the checkout,
                         never in it) + its dependencies' wheels + pip's own
    debs/                the Debian packages a plain bookworm machine may lack (debs.py)

It is cached by content (`recipe.payload_spec`): the project's version, dependencies and
source digest, the exact debs, the install script. A cached payload is found with a
stat, the sources' digest and, while apt's lists are unchanged, no apt run at all.
Building one needs no root: pip (which may download the dependencies' wheels, on the
host) and apt-get download.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from provision.box import debs as debian
from provision.box import recipe
from provision.errors import UserError
from provision.files import write_atomic
from provision.image import build as image_build
from provision.image import recipe as image_recipe

CACHE_ENV = "PROVISION_PAYLOAD_CACHE"
PAYLOAD_TAR = "payload.tar"
INSTALL_SCRIPT_SOURCE = Path(__file__).resolve().parent / recipe.INSTALL_SCRIPT

Say = Callable[[str], None]


@dataclass(frozen=True)
class Payload:
    key: str
    path: Path       # the tar, in the cache
    built: bool      # False: found in the cache
    seconds: float   # what this call took
    debs: tuple[str, ...] = ()
    wheels: tuple[str, ...] = ()


def cache_dir() -> Path:
    """$PROVISION_PAYLOAD_CACHE, else the machine image's cache when root (the wheels of
    the dependencies are shared with it), else ~/.cache/provision/payloads."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    if os.geteuid() == 0:
        return image_build.cache_dir()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "provision" / "payloads"


def _resolved_debs(cache: Path, say: Say) -> list[tuple[str, str]]:
    """The debs to carry; apt runs only when its lists changed since the last time."""
    stamp = {"lists": debian.lists_stamp(), "packages": list(recipe.MACHINE_PACKAGES),
             "python": list(recipe.BOX_PYTHON)}
    memo = cache / "debs-resolved.json"
    try:
        known = json.loads(memo.read_text())
        if known.get("stamp") == stamp:
            return [tuple(p) for p in known["debs"]]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    say(f"resolving {', '.join(recipe.MACHINE_PACKAGES)} and their dependencies with apt")
    found = debian.resolve(recipe.MACHINE_PACKAGES, recipe.BOX_PYTHON)
    write_atomic(memo, json.dumps({"stamp": stamp, "debs": found}) + "\n")
    return found


def _ensure_debs(cache: Path, packages: list[tuple[str, str]], say: Say) -> Path:
    spec = {"debs": [f"{n}={v}" for n, v in packages]}
    target = cache / ("debs-" + recipe.digest(spec))
    stamp = image_build.read_stamp(target)
    if stamp is not None and stamp.get("spec") == spec:
        return target / "debs"
    say(f"fetching {len(packages)} Debian packages for the machines (apt-get download)")
    staging = image_build.staging_dir(cache, "debs")
    try:
        (staging / "debs").mkdir()
        debian.download(packages, staging / "debs")
        image_build.publish(staging, target, {"spec": spec, "built_at": time.time(),
                                              "kind": "debs"})
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target / "debs"


def ensure_payload(*, cache: Path | None = None, source: Path | str | None = None,
                   force: bool = False, say: Say | None = None) -> Payload:
    """The current payload: from the cache, or made now. UserError (exit 2) when it
    cannot be made here (another python than the box's, apt failing, not a checkout)."""
    started = time.monotonic()
    say = say or (lambda _line: None)
    cache = Path(cache) if cache else cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    root = image_build.find_source(source)
    files = [(relative, path.read_bytes()) for relative, path in
             image_build.source_files(root)]
    version, requirements = image_build.project_metadata(root)
    requirements = [*requirements, *recipe.PAYLOAD_EXTRA_WHEELS]
    if sys.version_info[:2] != recipe.BOX_PYTHON:
        want = ".".join(map(str, recipe.BOX_PYTHON))
        raise UserError(f"the machines' python is {want} (Debian bookworm) and this one is "
                        f"{sys.version_info[0]}.{sys.version_info[1]}: prepare the Vagrant "
                        f"machines with a python {want} (the wheels must fit the machines)")
    script = INSTALL_SCRIPT_SOURCE.read_text()
    packages = _resolved_debs(cache, say)
    tag = f"cp{recipe.BOX_PYTHON[0]}{recipe.BOX_PYTHON[1]}"
    project = {"version": version, "requirements": sorted(requirements),
               "source": image_recipe.source_digest(files)}
    spec = recipe.payload_spec(project, image_recipe.dependency_key(requirements, tag),
                               packages, script)
    key = recipe.payload_key(spec)
    target = cache / key
    stamp = image_build.read_stamp(target)
    if not force and stamp is not None and stamp.get("spec") == spec \
            and (target / PAYLOAD_TAR).is_file():
        return Payload(key, target / PAYLOAD_TAR, False, time.monotonic() - started,
                       tuple(stamp.get("debs", ())), tuple(stamp.get("wheels", ())))
    with image_build.locked(cache):
        stamp = image_build.read_stamp(target)
        if not force and stamp is not None and stamp.get("spec") == spec \
                and (target / PAYLOAD_TAR).is_file():
            return Payload(key, target / PAYLOAD_TAR, False, time.monotonic() - started,
                           tuple(stamp.get("debs", ())), tuple(stamp.get("wheels", ())))
        say(f"making the Vagrant machines' payload ({image_recipe.DISTRIBUTION} {version}, "
            f"source {project['source']})")
        debs_dir = _ensure_debs(cache, packages, say)
        staging = image_build.staging_dir(cache, "payload")
        try:
            wheels = staging / "wheels"
            wheels.mkdir()
            dependencies = image_build.ensure_dependency_wheels(
                cache, requirements, recipe.BOX_PYTHON, say)
            for wheel in dependencies.glob("*.whl"):
                shutil.copy2(wheel, wheels / wheel.name)
            image_build.build_project_wheel(staging, files, wheels, staging / "build.log")
            shutil.rmtree(staging / "src", ignore_errors=True)
            debs = sorted(p.name for p in debs_dir.glob("*.deb"))
            wheel_names = sorted(p.name for p in wheels.glob("*.whl"))
            with tarfile.open(staging / PAYLOAD_TAR, "w", format=tarfile.GNU_FORMAT) as tar:
                _add(tar, recipe.PAYLOAD_KEY_FILE, (key + "\n").encode(), 0o644)
                _add(tar, recipe.INSTALL_SCRIPT, script.encode(), 0o755)
                for name in wheel_names:
                    tar.add(wheels / name, f"wheels/{name}")
                for name in debs:
                    tar.add(debs_dir / name, f"debs/{name}")
            shutil.rmtree(wheels)
            seconds = round(time.monotonic() - started, 1)
            image_build.publish(staging, target, {
                "spec": spec, "built_at": time.time(), "build_seconds": seconds,
                "kind": "payload", "debs": debs, "wheels": wheel_names})
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _prune(cache, keep=key)
    say(f"payload {key} made in {seconds:.0f}s ({len(wheel_names)} wheels, {len(debs)} debs)")
    return Payload(key, target / PAYLOAD_TAR, True, time.monotonic() - started,
                   tuple(debs), tuple(wheel_names))


def _add(tar: tarfile.TarFile, name: str, content: bytes, mode: int) -> None:
    import io

    info = tarfile.TarInfo(name)
    info.size = len(content)
    info.mode = mode
    info.mtime = int(time.time())
    tar.addfile(info, io.BytesIO(content))


def _prune(cache: Path, keep: str, others: int = 1) -> None:
    """Older payloads beyond the newest `others` go (clusters hold their own link)."""
    found = sorted((d for d in cache.glob("payload-*") if d.name != keep),
                   key=lambda d: (image_build.read_stamp(d) or {}).get("built_at", 0),
                   reverse=True)
    for directory in found[others:]:
        (directory / image_recipe.STAMP).unlink(missing_ok=True)
        shutil.rmtree(directory, ignore_errors=True)


def manifest_payload_path(manifest_path: Path | str) -> Path:
    """Where the rendered manifest wants the payload (its `vagrant.payload`)."""
    manifest_path = Path(manifest_path)
    if manifest_path.is_dir():
        manifest_path = manifest_path / "manifest.json"
    try:
        text = manifest_path.read_text(encoding="utf-8")
    except OSError as err:
        raise UserError(f"{manifest_path}: cannot read the node manifest ({err.strerror}); "
                        "run `provision render CLUSTER.yaml` first") from None
    try:
        name = json.loads(text)["vagrant"]["payload"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{manifest_path}: no `vagrant.payload` in this manifest; render it "
                        "again with `provision render CLUSTER.yaml`") from None
    if not isinstance(name, str) or not name or "/" in name:
        raise UserError(f"{manifest_path}: `vagrant.payload` must be a file name, not "
                        f"{name!r}; render it again with `provision render CLUSTER.yaml`")
    return manifest_path.parent / name


def place_payload(payload: Payload, target: Path) -> Path:
    """`target` becomes the payload: a hard link into the cache where it can be one, else
    a copy; swapped in whole (the Vagrantfile never sees half a file)."""
    try:
        if os.path.samefile(payload.path, target):
            return target
    except OSError:
        pass
    staged = target.with_name(f".{target.name}.{os.getpid()}")
    staged.unlink(missing_ok=True)
    try:
        try:
            os.link(payload.path, staged)
        except OSError:
            shutil.copyfile(payload.path, staged)
        os.chmod(staged, 0o644)
        os.replace(staged, target)
    finally:
        staged.unlink(missing_ok=True)
    return target


def prepare_machines(manifest_path: Path | str, *, say: Say | None = None,
                     cache: Path | None = None, source: Path | str | None = None) -> Payload:
    """Before `vagrant up` of a rendered cluster: its machines' payload, made or found,
    in place beside its manifest. Returns the payload (its key names what is installed)."""
    target = manifest_payload_path(manifest_path)
    payload = ensure_payload(cache=cache, source=source, say=say)
    place_payload(payload, target)
    return payload
