"""`provision box build|payload`: the lxc box and the Vagrant machines' payload (printing
only here)."""

from __future__ import annotations

import argparse
import sys


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _cmd_build(args: argparse.Namespace) -> int:
    from provision.box.build import add_box, ensure_box
    from provision.box.recipe import BOX_NAME

    box = ensure_box(args.provider, force=args.force, say=_say)
    how = f"built in {box.seconds:.1f}s" if box.built else \
        f"cached (found in {box.seconds:.2f}s)"
    print(f"box {box.key}: {box.path} ({how})")
    if args.no_add:
        return 0
    added = add_box(box, BOX_NAME, say=_say)
    print(f"vagrant box {BOX_NAME} ({box.provider}): "
          + ("added" if added else "already added"))
    return 0


def _cmd_payload(args: argparse.Namespace) -> int:
    from provision.box.payload import manifest_payload_path, prepare_machines

    payload = prepare_machines(args.manifest, say=_say)
    how = f"made in {payload.seconds:.1f}s" if payload.built else \
        f"cached (found in {payload.seconds:.2f}s)"
    print(f"payload {payload.key}: {manifest_payload_path(args.manifest)} ({how}; "
          f"{len(payload.wheels)} wheels, {len(payload.debs)} debs)")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    box = commands.add_parser(
        "box", help="Vagrant machines: the lxc box, and the payload every machine installs")
    sub = box.add_subparsers(dest="box_command", metavar="COMMAND", required=True)
    build = sub.add_parser(
        "build", help="build the vagrant-lxc box provision/bookworm (cached) and "
                      "`vagrant box add` it")
    build.add_argument("--provider", default="lxc", choices=["lxc"],
                       help="the Vagrant provider of the box (VirtualBox and libvirt "
                            "use debian/bookworm64)")
    build.add_argument("--force", action="store_true",
                       help="build it anew (the Debian base too), even if it is cached")
    build.add_argument("--no-add", action="store_true",
                       help="only build it; do not `vagrant box add` it")
    build.set_defaults(run=_cmd_build)
    payload = sub.add_parser(
        "payload", help="make (cached) the payload a rendered Vagrant cluster's machines "
                        "install offline, beside its manifest (`provision up` does it)")
    payload.add_argument("manifest", metavar="MANIFEST",
                         help="the rendered manifest.json, or the directory holding it")
    payload.set_defaults(run=_cmd_payload)
