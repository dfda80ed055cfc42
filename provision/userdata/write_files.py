"""`write_files` as coreos-cloudinit v1.13.0 treats them: content decoding and the /usr rule.

Pure functions shared by the user-data validator and the cluster-file checks,
so a cluster file is refused for exactly what its rendered user-data would be.
"""

from __future__ import annotations

import base64
import posixpath
import re
import struct
import zlib

_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_GZIP_MAGIC = b"\x1f\x8b"
_FHCRC, _FEXTRA, _FNAME, _FCOMMENT = 0x02, 0x04, 0x08, 0x10


class UndecodableContent(ValueError):
    """Content that does not decode with its `encoding`."""


def decode_content(content: bytes, encoding: str) -> bytes:
    """The bytes coreos-cloudinit writes, or `UndecodableContent` where it refuses them.

    Go's base64 decoder wants padding and skips line breaks; its gzip reader
    refuses a bad header at once. A body that fails later is not refused:
    coreos-cloudinit ignores that error and writes what it decompressed, so
    `gzip_body_problem` reports it separately.
    """
    if encoding == "":
        return content
    if encoding in ("b64", "base64"):
        return _base64(content)
    if encoding in ("gz", "gzip"):
        return _gunzip(content)
    if encoding in ("gz+base64", "gzip+base64", "gz+b64", "gzip+b64"):
        return _gunzip(_base64(content))
    raise UndecodableContent(f'"{encoding}" is not an encoding coreos-cloudinit knows')


def gzip_body_problem(content: bytes, encoding: str) -> str | None:
    """Why a gzip body that coreos-cloudinit accepts still decompresses badly, if it does."""
    if encoding not in ("gz", "gzip", "gz+base64", "gzip+base64", "gz+b64", "gzip+b64"):
        return None
    data = _base64(content) if "+" in encoding else content
    try:
        inflater = zlib.decompressobj(wbits=31)  # 31: gzip framing, checked trailer
        inflater.decompress(data)
        if not inflater.eof:
            return "the gzip data is truncated"
    except zlib.error as err:
        return f"the gzip data is corrupt ({err})"
    return None


def _base64(content: bytes) -> bytes:
    text = content.replace(b"\r", b"").replace(b"\n", b"")
    try:
        ascii_text = text.decode("ascii")
    except UnicodeDecodeError:
        raise UndecodableContent("it is not base64 (non-ASCII characters)") from None
    if not _BASE64.fullmatch(ascii_text):
        bad = next((i for i, c in enumerate(ascii_text)
                    if not (c.isalnum() or c in "+/=")), None)
        if bad is not None:
            raise UndecodableContent(f"it is not base64 ({ascii_text[bad]!r} at character "
                                     f"{bad + 1})")
        raise UndecodableContent("it is not base64 (wrong length or padding)")
    return base64.b64decode(ascii_text)


def _gunzip(data: bytes) -> bytes:
    _check_gzip_header(data)
    inflater = zlib.decompressobj(wbits=31)
    try:
        return inflater.decompress(data)
    except zlib.error:
        return b""  # the header was fine; see gzip_body_problem


def _check_gzip_header(data: bytes) -> None:
    """Go's gzip.NewReader: the fixed header, then the optional fields its flags announce."""
    if len(data) < 10:
        raise UndecodableContent("it is not gzip data (shorter than a gzip header)")
    if data[:2] != _GZIP_MAGIC or data[2] != 8:
        raise UndecodableContent("it is not gzip data (no gzip header)")
    flags = data[3]
    at = 10
    if flags & _FEXTRA:
        if len(data) < at + 2:
            raise UndecodableContent("its gzip header is truncated")
        (size,) = struct.unpack_from("<H", data, at)
        at += 2 + size
    for flag in (_FNAME, _FCOMMENT):
        if flags & flag:
            end = data.find(b"\x00", at)
            if end < 0:
                raise UndecodableContent("its gzip header is truncated")
            at = end + 1
    if flags & _FHCRC:
        if len(data) < at + 2:
            raise UndecodableContent("its gzip header is truncated")
        (crc,) = struct.unpack_from("<H", data, at)
        if crc != zlib.crc32(data[:at]) & 0xFFFF:
            raise UndecodableContent("its gzip header checksum is wrong")
        at += 2
    if len(data) < at:
        raise UndecodableContent("its gzip header is truncated")


def on_read_only_usr(path: str) -> bool:
    """coreos-cloudinit's rule, exactly: the file's directory starts with `/usr`.

    A plain prefix match on the cleaned directory, so `/usrlocal/x` is refused
    and `/usr` itself is not.
    """
    return _go_clean(path[: path.rfind("/") + 1]).startswith("/usr")


def _go_clean(path: str) -> str:
    """Go's path.Clean: like normpath, but a run of leading slashes becomes one."""
    cleaned = posixpath.normpath(path) if path else "."
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned
