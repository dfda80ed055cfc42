"""`provision image build|list`: the machine image in its cache (printing only here)."""

from __future__ import annotations

import argparse
import sys
import time


def _cmd_build(args: argparse.Namespace) -> int:
    from provision.image.build import ensure_image

    image = ensure_image(force=args.force, source=args.source,
                         say=lambda line: print(line, file=sys.stderr, flush=True))
    how = f"built in {image.seconds:.1f}s" if image.built else \
        f"cached (found in {image.seconds:.2f}s)"
    print(f"image {image.key}: {image.rootfs} ({how})")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from provision.image.build import cache_dir, list_images

    cache = cache_dir()
    rows = list_images(cache)
    if not rows:
        print(f"no images in {cache}")
        return 0
    print(f"{'KEY':<24} {'KIND':<6} {'BUILT':<19} {'SECONDS':>7}  WHAT")
    for key, stamp in rows:
        spec = stamp.get("spec", {})
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp.get("built_at", 0)))
        what = (f"{spec.get('version', '')} source {spec.get('source', '')}"
                if stamp.get("kind") == "image" else
                f"{spec.get('suite', '')} {len(spec.get('packages', []))} packages"
                if stamp.get("kind") == "base" else spec.get("python", ""))
        print(f"{key:<24} {stamp.get('kind', ''):<6} {when:<19} "
              f"{stamp.get('build_seconds', 0):>7}  {what}")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    image = commands.add_parser(
        "image", help="the machine image real machines boot (Debian + this project)")
    sub = image.add_subparsers(dest="image_command", metavar="COMMAND", required=True)
    build = sub.add_parser("build", help="build the image unless the cache has the current one")
    build.add_argument("--force", action="store_true",
                       help="build it anew (the Debian base too), even if it is cached")
    build.add_argument("--source", metavar="DIR",
                       help="the project checkout to install (default: this one)")
    build.set_defaults(run=_cmd_build)
    listing = sub.add_parser("list", help="the images and layers in the cache")
    listing.set_defaults(run=_cmd_list)
