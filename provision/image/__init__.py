"""The base image of real machines: a Debian root file system with this project installed.

    recipe.py  what goes into an image and the cache key naming it (pure)
    build.py   builds it with mmdebstrap + an offline install from a wheelhouse, cached
    cli.py     `provision image build|list`

A provider calls `provision.image.ensure_image()` and boots machines on copy-on-write
overlays of the root file system it returns (`Image.rootfs`).
"""

from provision.image.build import Image, ImageBuildError, ensure_image, hold_image, release_image

__all__ = ["Image", "ImageBuildError", "ensure_image", "hold_image", "release_image"]
