"""systemd unit files (systemd.syntax(7)): parse, serialise canonically, hash.

A `UnitFile` is a value: its options grouped by section in first-seen order,
each section's options in file order. Values are kept verbatim (quotes and
empty values included) because their meaning is per setting; `serialize` is the
canonical text and `content_hash` identifies a unit by it, so reformatting a file
or editing its comments never makes fleet think the unit changed.
"""

from __future__ import annotations

import hashlib
import re
from collections import namedtuple
from collections.abc import Iterable

BLANK = " \t"
COMMENT_STARTS = "#;"
_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_KEY_CHARS_HINT = "keys use letters, digits, '_' and '-'"
# NUL, bare CR and other C0 controls would not survive a serialise/parse round
# trip (or a trip through etcd and JSON); lone surrogates cannot be encoded to hash.
_BAD_CHAR_RE = re.compile("[\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]")


class UnitFileError(ValueError):
    """A problem in unit-file text; `line` and `col` are 1-based (None when unknown)."""

    def __init__(self, line: int | None = None, col: int | None = None,
                 message: str = "invalid unit file") -> None:
        self.line = line
        self.col = col
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = []
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.col is not None:
            where.append(f"column {self.col}")
        return f"{', '.join(where)}: {self.message}" if where else self.message


# Values, but not dataclasses: fleetctl's listings import this module, and dataclasses
# (with inspect) plus making each class cost a short command a fifth of its time.
class UnitOption(namedtuple("UnitOption", ("section", "name", "value"))):
    """One `Name=Value` line of a section; the shape of fleet's JSON `{section, name, value}`."""

    __slots__ = ()
    section: str
    name: str
    value: str

    def __new__(cls, section: str, name: str, value: str) -> UnitOption:
        # Options also come from code and YAML, not only from parsing; refusing here
        # what the text form cannot carry keeps parse(serialize(u)) == u true.
        for check, field in ((_section_problem, section), (_key_problem, name),
                             (_value_problem, value)):
            problem = check(field)
            if problem is not None:
                raise UnitFileError(message=f"option [{_clip(section)}] "
                                            f"{_clip(name)}: {problem[1]}")
        return super().__new__(cls, section, name, value)


class UnitFile:
    """Options grouped by section (first-seen order); a repeated section is merged in order.
    Immutable; equal (and hashed) by its options."""

    __slots__ = ("options",)
    options: tuple[UnitOption, ...]

    def __init__(self, options: tuple[UnitOption, ...] = ()) -> None:
        grouped: dict[str, list[UnitOption]] = {}
        for option in options:
            if not isinstance(option, UnitOption):
                raise UnitFileError(message=f"a unit file holds UnitOption values, not "
                                            f"{type(option).__name__}")
            grouped.setdefault(option.section, []).append(option)
        object.__setattr__(self, "options",
                           tuple(option for group in grouped.values() for option in group))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"a UnitFile is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"a UnitFile is immutable: cannot delete {name!r}")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self.options == other.options  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self.options)

    def __repr__(self) -> str:
        return f"UnitFile(options={self.options!r})"

    def __reduce__(self) -> tuple:
        return (UnitFile, (self.options,))

    @classmethod
    def from_options(cls, options: Iterable[UnitOption]) -> UnitFile:
        return cls(tuple(options))

    def sections(self) -> list[str]:
        return list(dict.fromkeys(option.section for option in self.options))

    def section(self, section: str) -> tuple[UnitOption, ...]:
        return tuple(option for option in self.options if option.section == section)

    def get(self, section: str, name: str) -> list[str]:
        return [o.value for o in self.options if o.section == section and o.name == name]

    def get_last(self, section: str, name: str) -> str | None:
        values = self.get(section, name)
        return values[-1] if values else None


def parse_unit_file(text: str) -> UnitFile:
    if not isinstance(text, str):
        raise UnitFileError(message=f"unit file content must be text, not "
                                    f"{type(text).__name__}; decode it as UTF-8 first")
    if text.startswith("\ufeff"):
        text = text[1:]  # editors on some systems write a BOM; systemd skips it too
    parser = _Parser()
    for lineno, raw in enumerate(text.split("\n"), start=1):
        parser.feed(lineno, raw[:-1] if raw.endswith("\r") else raw)
    parser.finish()
    return UnitFile(tuple(parser.options))


def serialize(unit: UnitFile) -> str:
    """Canonical text: `[Section]`, `Name=Value` lines, a blank line between sections."""
    blocks: list[str] = []
    current = None
    for option in unit.options:
        if option.section != current:
            current = option.section
            blocks.append(f"[{current}]\n")
        blocks[-1] += f"{option.name}={option.value}\n"
    return "\n".join(blocks)


def content_hash(unit: UnitFile) -> str:
    """SHA-1 hex of the canonical text, so layout and comments never change it."""
    data = serialize(unit).encode("utf-8")
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()


def short_hash(digest: str) -> str:
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{40}", digest):
        raise ValueError(f"{_clip(digest)!r} is not a SHA-1 hex digest from content_hash()")
    return digest[:7]


class _Parser:
    """Joins continuation lines and keeps enough bookkeeping to point errors at the source."""

    def __init__(self) -> None:
        self.options: list[UnitOption] = []
        self.section: str | None = None
        # The logical line being assembled: its parts, and for each part its offset
        # in the joined text and its physical line (to point errors at the source).
        self.parts: list[str] = []
        self.pieces: list[tuple[int, int]] = []
        self.length = 0

    def feed(self, lineno: int, raw: str) -> None:
        bad = _BAD_CHAR_RE.search(raw)
        if bad:
            raise UnitFileError(lineno, bad.start() + 1, _bad_char_message(bad.group()))
        head = raw.lstrip(BLANK)
        if head and head[0] in COMMENT_STARTS:
            return  # comments are skipped, also in the middle of a continuation
        if not self.pieces and not head:
            return
        self.pieces.append((self.length, lineno))
        body = raw.rstrip(BLANK)
        # Odd trailing backslashes continue the line (an even run is escaped
        # backslashes); systemd turns the continuing backslash into a space.
        continues = (len(body) - len(body.rstrip("\\"))) % 2 == 1
        part = body[:-1] + " " if continues else raw
        self.parts.append(part)
        self.length += len(part)
        if not continues:
            self._logical_line()

    def finish(self) -> None:
        if self.pieces:  # a continuation at end of file ends there, as in systemd
            self._logical_line()

    def _where(self, offset: int) -> tuple[int, int]:
        start, lineno = self.pieces[0]
        for piece_start, piece_line in self.pieces:
            if piece_start <= offset:
                start, lineno = piece_start, piece_line
        return lineno, offset - start + 1

    def _error(self, offset: int, message: str) -> UnitFileError:
        return UnitFileError(*self._where(offset), message)

    def _logical_line(self) -> None:
        text = "".join(self.parts)
        first = len(text) - len(text.lstrip(BLANK))
        content = text.strip(BLANK)
        try:
            if content.startswith("["):
                self._header(first, content)
            elif "=" in content:
                self._option(first, content)
            else:
                raise self._error(first, "line is neither a [section] header nor key=value; "
                                         "write Name=Value for a setting, [Name] for a "
                                         "section, or start a comment with # or ;")
        finally:
            self.parts, self.pieces, self.length = [], [], 0

    def _header(self, first: int, content: str) -> None:
        if not content.endswith("]") or len(content) == 1:
            raise self._error(first + len(content) - 1,
                              "section header is missing its closing ']'; write it as "
                              "[Name] alone on the line (comments go on their own line)")
        name = content[1:-1]
        problem = _section_problem(name)
        if problem is not None:
            raise self._error(first + 1 + problem[0], problem[1])
        self.section = name

    def _option(self, first: int, content: str) -> None:
        key_part, _, value_part = content.partition("=")
        key = key_part.rstrip(BLANK)
        problem = _key_problem(key)
        if problem is not None:
            raise self._error(first + problem[0], problem[1])
        if self.section is None:
            raise self._error(first, f"setting {key}= comes before any [section] header; "
                                     "put it under one such as [Unit] or [Service]")
        value = value_part.strip(BLANK)
        value_at = first + len(key_part) + 1 + len(value_part) - len(value_part.lstrip(BLANK))
        problem = _value_problem(value)
        if problem is not None:
            raise self._error(value_at + problem[0], problem[1])
        self.options.append(UnitOption(self.section, key, value))


def _bad_char_message(ch: str) -> str:
    if ch == "\0":
        return "NUL byte in unit file; unit files are plain text, remove it"
    if ch == "\r":
        return "carriage return not followed by a line feed; use \\n or \\r\\n line endings"
    if "\ud800" <= ch <= "\udfff":
        return "text is not valid Unicode (lone surrogate); save the file as UTF-8"
    return f"control character U+{ord(ch):04X} is not allowed in a unit file; remove it"


def _section_problem(name: object) -> tuple[int, str] | None:
    if not isinstance(name, str):
        return 0, f"section name must be a string, not {type(name).__name__}"
    if not name:
        return 0, "section name is empty; write one such as [Unit] or [Service]"
    for i, ch in enumerate(name):
        if ch in "[]":
            return i, f"section name contains {ch!r}; section names cannot contain brackets"
    bad = _BAD_CHAR_RE.search(name)
    if bad:
        return bad.start(), _bad_char_message(bad.group())
    return None


def _key_problem(key: object) -> tuple[int, str] | None:
    if not isinstance(key, str):
        return 0, f"setting name must be a string, not {type(key).__name__}"
    if not key:
        return 0, "line starts with '=' and has no setting name; write Name=Value"
    if _KEY_RE.fullmatch(key):
        return None
    for i, ch in enumerate(key):
        if not _KEY_RE.fullmatch(ch):
            return i, f"character {ch!r} is not allowed in setting name {_clip(key)!r}; " \
                      f"{_KEY_CHARS_HINT}"
    return None  # unreachable: a key failing the pattern has a failing character


def _value_problem(value: object) -> tuple[int, str] | None:
    if not isinstance(value, str):
        return 0, f"value must be a string, not {type(value).__name__}"
    bad = _BAD_CHAR_RE.search(value)
    if bad:
        return bad.start(), _bad_char_message(bad.group())
    if value != value.strip(BLANK):
        return 0, "value has leading or trailing spaces, which a unit file cannot keep; " \
                  "strip them"
    if (len(value) - len(value.rstrip("\\"))) % 2 == 1:
        return len(value) - 1, "value ends with a single '\\', which would continue the " \
                               "line; write '\\\\' for a literal backslash"
    return None


def _clip(text: object, limit: int = 60) -> str:
    shown = str(text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t", "r": "\r", "a": "\a",
            "b": "\b", "f": "\f", "v": "\v", "s": " ", ";": ";"}
_COMMAND_BLANK = " \t\n"


def split_command_line(value: str) -> list[str]:
    """Split an Exec*= value into words with systemd's quoting rules.

    Words are separated by whitespace; double and single quotes group (also in
    mid-word, `a"b c"` is one word) and backslash escapes work inside both kinds of
    quotes: \\\\ \\" \\' \\n \\t \\r \\a \\b \\f \\v \\s (space) \\; and \\xHH. Prefixes
    such as `-` or `@` stay part of the first word. Errors carry the 1-based column.
    """
    if not isinstance(value, str):
        raise UnitFileError(message=f"command line must be a string, not {type(value).__name__}")
    words: list[str] = []
    word: list[str] = []
    in_word = False
    quote: str | None = None
    quote_at = 0
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "\\":
            text, i = _unescape(value, i)
            word.append(text)
            in_word = True
            continue
        if quote is not None:
            if ch == quote:
                quote = None
            else:
                word.append(ch)
        elif ch in _COMMAND_BLANK:
            if in_word:
                words.append("".join(word))
                word, in_word = [], False
        elif ch in "\"'":
            quote, quote_at, in_word = ch, i, True
        else:
            word.append(ch)
            in_word = True
        i += 1
    if quote is not None:
        kind = "double" if quote == '"' else "single"
        raise UnitFileError(col=quote_at + 1, message=f"unterminated {kind} quote; close it "
                                                      f"with a matching {quote}")
    if in_word:
        words.append("".join(word))
    return words


def _unescape(value: str, i: int) -> tuple[str, int]:
    """Decode the escape starting at value[i] == '\\'; returns (text, next index)."""
    if i + 1 >= len(value):
        raise UnitFileError(col=i + 1, message="command line ends with a lone '\\'; write "
                                               "'\\\\' for a literal backslash")
    code = value[i + 1]
    if code in _ESCAPES:
        return _ESCAPES[code], i + 2
    if code == "x":
        digits = value[i + 2:i + 4]
        if len(digits) != 2 or not all(c in "0123456789abcdefABCDEF" for c in digits):
            raise UnitFileError(col=i + 1, message="'\\x' must be followed by two hex digits, "
                                                   "e.g. \\x41")
        if digits == "00":
            raise UnitFileError(col=i + 1, message="'\\x00' (NUL) cannot appear in a command "
                                                   "line")
        return chr(int(digits, 16)), i + 4
    raise UnitFileError(col=i + 1, message=f"unknown escape '\\{code}'; write '\\\\' for a "
                                           "literal backslash (known: \\\\ \\\" \\' \\n \\t "
                                           "\\r \\s \\; \\xHH ...)")
