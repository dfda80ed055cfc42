"""The vagrant-lxc box: built from Debian packages by the machine image's steps, cached,
and added to Vagrant as `provision/bookworm`.

`ensure_box()` answers from the cache when a box of the current key is there; otherwise
it builds the missing layers under the image cache's lock: the box's Debian base
(`recipe.BOX_BASE`, by `provision.image.build.ensure_base`: mmdebstrap + the image's
steps making one tree fit to boot many machines) and the box layer (a copy of the base +
Vagrant's user, its insecure public key, passwordless sudo), packed as vagrant-lxc wants
it: a tar of `metadata.json`, `lxc-config` and `rootfs.tar.gz` (entries under
`./rootfs/`, which vagrant-lxc's template strips). Each is built in a staging directory
renamed into place when complete. Root only (mmdebstrap, chroot).

`add_box()` runs `vagrant box add` unless Vagrant already has this very box (our key
is in the metadata.json Vagrant keeps).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from provision.box import recipe
from provision.errors import OperationFailed, UserError
from provision.image import build as image_build
from provision.image import recipe as image_recipe
from provision.image.mirror import MIRROR_ENV, debian_mirror

KEEP_OTHER_BOXES = 1
PACK_TIMEOUT = 1800.0
BOX_ADD_TIMEOUT = 900.0

Say = Callable[[str], None]


@dataclass(frozen=True)
class Box:
    provider: str
    key: str
    path: Path      # the .box file
    built: bool     # False: found in the cache
    seconds: float  # what this call took


def insecure_public_key() -> str:
    """Vagrant's insecure public key, from Debian's vagrant package."""
    for path in sorted(glob.glob(recipe.INSECURE_KEY_GLOB)):
        text = Path(path).read_text().strip()
        if text:
            return text + "\n"
    raise UserError("Vagrant's insecure public key was not found (" + recipe.INSECURE_KEY_GLOB
                    + "); the box is built for Debian's vagrant: apt-get install vagrant")


def box_problem(provider: str = "lxc") -> str | None:
    """Why the box cannot be built here (one line), or None."""
    if provider not in recipe.PROVIDERS:
        return (f"no box is built for provider {provider}; `provision box build` builds "
                f"{', '.join(recipe.PROVIDERS)} (VirtualBox/libvirt use debian/bookworm64)")
    problem = image_build.image_problem()
    if problem:
        return problem.replace("building the machine image", "building the box")
    if shutil.which("vagrant") is None or not glob.glob(recipe.INSECURE_KEY_GLOB):
        return "building the box needs Debian's vagrant (apt-get install vagrant vagrant-lxc)"
    return None


def ensure_box(provider: str = "lxc", *, force: bool = False, cache: Path | None = None,
               say: Say | None = None) -> Box:
    """The current box file: from the cache, or built now (`force`: anew, base too)."""
    started = time.monotonic()
    say = say or (lambda _line: None)
    problem = box_problem(provider)
    if problem and provider not in recipe.PROVIDERS:
        raise UserError(problem)
    cache = Path(cache) if cache else image_build.cache_dir()
    mirror = debian_mirror(image_recipe.SUITE) or ""
    base_spec = image_recipe.base_spec(mirror, recipe.BOX_BASE)
    base_key = image_recipe.base_key(base_spec)
    public_key = insecure_public_key()
    spec = recipe.box_spec(provider, base_key, public_key)
    key = recipe.box_key(spec)
    target = cache / key
    found = _ready(target, spec)
    if found is not None and not force:
        return Box(provider, key, found, False, time.monotonic() - started)
    if problem:
        raise UserError(problem)
    if not mirror:
        raise UserError(f"no Debian mirror for {image_recipe.SUITE} in "
                        f"/etc/apt/sources.list{{,.d/*}}; set {MIRROR_ENV}")
    cache.mkdir(parents=True, exist_ok=True)
    with image_build.locked(cache):
        found = _ready(target, spec)
        if found is not None and not force:
            return Box(provider, key, found, False, time.monotonic() - started)
        image_build.sweep_staging(cache)
        base = image_build.ensure_base(cache, base_key, base_spec, force, say)
        _build_box(cache, key, spec, base, public_key, say)
        _prune(cache, keep=key)
    return Box(provider, key, target / recipe.BOX_FILE, True, time.monotonic() - started)


def _ready(directory: Path, spec: Mapping) -> Path | None:
    stamp = image_build.read_stamp(directory)
    box = directory / recipe.BOX_FILE
    if stamp is None or stamp.get("spec") != spec or not box.is_file():
        return None
    return box


def _build_box(cache: Path, key: str, spec: dict, base: Path, public_key: str,
               say: Say) -> None:
    started = time.monotonic()
    staging = image_build.staging_dir(cache, "box")
    log = staging / "build.log"
    layer = staging / "layer"
    rootfs = layer / "rootfs"
    try:
        say(f"building the {spec['provider']} box layer on {base.parent.name}")
        layer.mkdir()
        image_build.run_step(["cp", "-a", "--reflink=auto", str(base), str(rootfs)], log,
                             "copy the base")
        add_vagrant_user(rootfs, public_key, log)
        say("packing the box (rootfs.tar.gz)")
        pack_box(layer, staging / recipe.BOX_FILE, recipe.box_metadata(key), log)
        shutil.rmtree(layer)
        seconds = round(time.monotonic() - started, 1)
        image_build.publish(staging, cache / key, {
            "spec": spec, "built_at": time.time(), "build_seconds": seconds, "kind": "box",
            "box_bytes": (staging / recipe.BOX_FILE).stat().st_size})
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    say(f"box layer built in {seconds:.0f}s")


def add_vagrant_user(rootfs: Path, public_key: str, log: Path) -> None:
    """Vagrant's user: a home, Vagrant's insecure public key, passwordless sudo."""
    user = recipe.VAGRANT_USER
    image_build.in_root(rootfs, ["useradd", "--create-home", "--shell", "/bin/bash",
                                 "--user-group", user], log, f"add the {user} user")
    ids = recipe.passwd_ids((rootfs / "etc/passwd").read_text(), user)
    if ids is None:
        raise image_build.ImageBuildError(f"useradd made no {user} entry in /etc/passwd")
    ssh = rootfs / "home" / user / ".ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    keys = ssh / "authorized_keys"
    keys.write_text(public_key)
    keys.chmod(0o600)
    for path in (ssh, keys):
        os.chown(path, *ids)
    sudoers = rootfs / recipe.SUDOERS_PATH
    sudoers.write_text(recipe.SUDOERS)
    sudoers.chmod(0o440)


def pack_box(layer: Path, box: Path, metadata: Mapping, log: Path) -> None:
    """The .box: a plain tar (Vagrant unpacks it with bsdtar, which detects the format)
    of metadata.json, lxc-config and rootfs.tar.gz. gzip -1: vagrant-lxc's template
    needs gzip, and level 1 packs ~3x faster than -9 for ~10 % more bytes."""
    image_build.run_step(
        ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", str(layer),
         "-I", "gzip -1", "-cf", str(layer / "rootfs.tar.gz"), "./rootfs"],
        log, "pack rootfs.tar.gz", timeout=PACK_TIMEOUT)
    (layer / "metadata.json").write_text(json.dumps(dict(metadata), sort_keys=True) + "\n")
    (layer / "lxc-config").write_text(recipe.LXC_CONFIG)
    image_build.run_step(["tar", "-C", str(layer), "-cf", str(box), "metadata.json",
                          "lxc-config", "rootfs.tar.gz"], log, "pack the box")


def _prune(cache: Path, keep: str) -> None:
    others = sorted((d for d in cache.glob("box-*") if d.name != keep),
                    key=lambda d: (image_build.read_stamp(d) or {}).get("built_at", 0),
                    reverse=True)
    for directory in others[KEEP_OTHER_BOXES:]:
        (directory / image_recipe.STAMP).unlink(missing_ok=True)
        shutil.rmtree(directory, ignore_errors=True)


# -- Vagrant's side ------------------------------------------------------------------------------

def vagrant_home(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("VAGRANT_HOME") or Path.home() / ".vagrant.d")


def added_key(name: str, provider: str, env: Mapping[str, str] | None = None) -> str | None:
    """Our key of the box Vagrant has as `name` for `provider`, if any."""
    metadata = (vagrant_home(env) / "boxes" / recipe.vagrant_box_dir(name) /
                recipe.BOX_VERSION / provider / "metadata.json")
    try:
        return json.loads(metadata.read_text()).get(recipe.METADATA_KEY)
    except (OSError, ValueError, AttributeError):
        return None


def add_box(box: Box, name: str = recipe.BOX_NAME, *, env: Mapping[str, str] | None = None,
            say: Say | None = None) -> bool:
    """`vagrant box add --force` unless Vagrant has this box already. True: added now."""
    say = say or (lambda _line: None)
    run_env = {**os.environ, **(env or {})}
    if added_key(name, box.provider, run_env) == box.key:
        return False
    say(f"vagrant box add {name} ({box.path})")
    # From a directory of our own: vagrant reads the Vagrantfile of its working
    # directory or any parent, and a checkout has one.
    with tempfile.TemporaryDirectory(prefix="provision-box-add-") as cwd:
        try:
            done = subprocess.run(["vagrant", "box", "add", "--force", "--name", name,
                                   "--provider", box.provider, str(box.path)],
                                  cwd=cwd, env={**run_env, "VAGRANT_CWD": cwd},
                                  capture_output=True, text=True, check=False,
                                  stdin=subprocess.DEVNULL, timeout=BOX_ADD_TIMEOUT)
        except FileNotFoundError:
            raise UserError("vagrant is not installed; apt-get install vagrant vagrant-lxc"
                            ) from None
    if done.returncode != 0:
        tail = "\n".join(f"  {line}" for line in
                         (done.stderr or done.stdout).strip().splitlines()[-12:])
        raise OperationFailed(f"vagrant box add {name} failed (exit status "
                              f"{done.returncode}):\n{tail}")
    if added_key(name, box.provider, run_env) != box.key:
        raise OperationFailed(f"vagrant box add {name} succeeded but Vagrant does not hold "
                              f"box {box.key} under {vagrant_home(run_env)}")
    return True
