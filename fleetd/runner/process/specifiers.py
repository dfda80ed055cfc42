"""Text expansion for unit settings, pure: specifiers, `$VAR` in Exec lines, env files.

The order is systemd's: specifiers (`%i`, `%n`, ...) are expanded on the raw
setting, the result is split into words with the Exec quoting rules, and only
then, when a command is about to run, environment variables are substituted
into the words (`$VAR` alone splits into several words, `${VAR}` never does).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fleetd.unit.names import UnitName
from fleetd.unit.specifiers import SpecifierError
from fleetd.unit.specifiers import expand_specifiers as _expand
from fleetd.unit.unitfile import UnitFileError, split_command_line

_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEX = "0123456789abcdefABCDEF"


class ExpansionError(ValueError):
    """A setting that cannot be expanded (unknown specifier, bad quoting)."""


def expand_specifiers(value: str, table: Mapping[str, str]) -> str:
    """Replace `%x` specifiers; an unknown one or a lone trailing `%` is an error."""
    try:
        return _expand(value, table)
    except SpecifierError as err:
        raise ExpansionError(str(err)) from None


@dataclass(frozen=True)
class SpecifierContext:
    """What specifiers refer to besides the unit name itself."""

    machine_id: str
    hostname: str
    runtime_dir: str = "/run"
    boot_id: str = ""
    kernel_release: str = ""
    user: str = "root"
    uid: str = "0"
    home: str = "/root"
    shell: str = "/bin/sh"


def unescape_name_part(text: str) -> str:
    """systemd's unit-name unescaping (%I, %P): `-` is `/`, `\\xNN` is a byte."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "-":
            out.append("/")
        elif ch == "\\" and text[i + 1:i + 2] == "x" and len(text) >= i + 4 \
                and all(c in _HEX for c in text[i + 2:i + 4]):
            out.append(chr(int(text[i + 2:i + 4], 16)))
            i += 3
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def specifier_table(name: UnitName, context: SpecifierContext) -> dict[str, str]:
    """The value of every specifier this runner understands, for one unit."""
    instance = name.instance or ""
    unescaped_instance = unescape_name_part(instance)
    unescaped_prefix = unescape_name_part(name.prefix)
    if instance:
        path = unescaped_instance if unescaped_instance.startswith("/") \
            else "/" + unescaped_instance
    else:
        path = unescaped_prefix if unescaped_prefix.startswith("/") else "/" + unescaped_prefix
    return {
        "n": name.full, "N": name.stem, "p": name.prefix, "P": unescaped_prefix,
        "i": instance, "I": unescaped_instance, "f": path,
        "m": context.machine_id, "H": context.hostname, "b": context.boot_id,
        "v": context.kernel_release, "t": context.runtime_dir,
        "u": context.user, "U": context.uid, "h": context.home, "s": context.shell,
        "%": "%",
    }




def is_env_name(name: str) -> bool:
    return bool(_ENV_NAME_RE.fullmatch(name))


def parse_environment_words(value: str) -> tuple[list[tuple[str, str]], list[str]]:
    """An `Environment=` value (specifiers already expanded) → (assignments, warnings).

    Words are quoted like Exec lines; a word that is not `NAME=value` is skipped
    with a warning, as systemd does.
    """
    try:
        words = split_command_line(value)
    except UnitFileError as err:
        return [], [f"Environment={value}: {err}; ignoring the line"]
    pairs: list[tuple[str, str]] = []
    warnings: list[str] = []
    for word in words:
        key, eq, val = word.partition("=")
        if not eq or not is_env_name(key):
            warnings.append(f"Environment= word {word!r} is not a NAME=value assignment; "
                            "ignoring it")
            continue
        pairs.append((key, val))
    return pairs, warnings


def parse_environment_file(text: str) -> tuple[list[tuple[str, str]], list[str]]:
    """An `EnvironmentFile=` file → (assignments in order, warnings).

    systemd's format: `NAME=value` lines, `#`/`;` comment lines, blank lines;
    values may be single-quoted (literal), double-quoted (backslash escapes
    \\" \\\\ \\` \\$ and line continuation) or bare (backslash escapes the next
    character, a trailing backslash continues the line, trailing blanks drop).
    """
    parser = _EnvFileParser()
    for ch in text:
        parser.feed(ch)
    parser.feed("\n")
    return parser.pairs, parser.warnings


class _EnvFileParser:
    def __init__(self) -> None:
        self.pairs: list[tuple[str, str]] = []
        self.warnings: list[str] = []
        self.state = "pre-key"
        self.key: list[str] = []
        self.value: list[str] = []
        self.keep = 0  # value length that trailing-blank trimming must not cut into
        self.line = 1

    def feed(self, ch: str) -> None:
        getattr(self, "_" + self.state.replace("-", "_"))(ch)
        if ch == "\n":
            self.line += 1

    def _pre_key(self, ch: str) -> None:
        if ch in "#;":
            self.state = "comment"
        elif ch not in " \t\r\n":
            self.state = "key"
            self.key = [ch]

    def _key(self, ch: str) -> None:
        if ch == "\n":
            self.warnings.append(f"line {self.line}: {''.join(self.key).strip()!r} has no '='; "
                                 "ignoring it")
            self.state = "pre-key"
        elif ch == "=":
            self.state = "pre-value"
            self.value, self.keep = [], 0
        else:
            self.key.append(ch)

    def _pre_value(self, ch: str) -> None:
        if ch == "\n":
            self._finish()
        elif ch == "'":
            self.state = "single"
        elif ch == '"':
            self.state = "double"
        elif ch == "\\":
            self.state = "value-escape"
        elif ch not in " \t\r":
            self.state = "value"
            self.value.append(ch)
            self.keep = len(self.value)

    def _value(self, ch: str) -> None:
        if ch == "\n":
            self._finish()
        elif ch == "\\":
            self.state = "value-escape"
        else:
            self.value.append(ch)
            if ch not in " \t\r":
                self.keep = len(self.value)

    def _value_escape(self, ch: str) -> None:
        self.state = "value"
        if ch != "\n":  # backslash-newline continues the value on the next line
            self.value.append(ch)
            self.keep = len(self.value)

    def _single(self, ch: str) -> None:
        if ch == "'":
            self.state = "pre-value"
        else:
            self.value.append(ch)
            self.keep = len(self.value)

    def _double(self, ch: str) -> None:
        if ch == '"':
            self.state = "pre-value"
        elif ch == "\\":
            self.state = "double-escape"
        else:
            self.value.append(ch)
            self.keep = len(self.value)

    def _double_escape(self, ch: str) -> None:
        self.state = "double"
        if ch == "\n":
            return
        if ch not in '"\\`$':
            self.value.append("\\")
        self.value.append(ch)
        self.keep = len(self.value)

    def _comment(self, ch: str) -> None:
        if ch == "\\":
            self.state = "comment-escape"
        elif ch == "\n":
            self.state = "pre-key"

    def _comment_escape(self, ch: str) -> None:
        self.state = "comment"

    def _finish(self) -> None:
        key = "".join(self.key).strip(" \t\r")
        value = "".join(self.value[:self.keep])
        if is_env_name(key):
            self.pairs.append((key, value))
        else:
            self.warnings.append(f"line {self.line}: {key!r} is not a valid variable name; "
                                 "ignoring it")
        self.state = "pre-key"
        self.key, self.value, self.keep = [], [], 0


def expand_variables(words: Iterable[str], env: Mapping[str, str]) -> list[str]:
    """Substitute environment variables into already-split Exec words.

    A word that is exactly `$NAME` becomes the variable's value split at blanks
    (zero words when unset or empty); elsewhere `${NAME}` is replaced in place,
    `${NAME:-default}` and `${NAME:+alternative}` work as in the shell, `$$` is a
    literal `$` and any other `$` stays as it is.
    """
    out: list[str] = []
    for word in words:
        if word.startswith("$") and is_env_name(word[1:]):
            out.extend(env.get(word[1:], "").split())
        else:
            out.append(substitute_variables(word, env))
    return out


def substitute_variables(word: str, env: Mapping[str, str]) -> str:
    out: list[str] = []
    i = 0
    while i < len(word):
        ch = word[i]
        if ch != "$" or i + 1 >= len(word):
            out.append(ch)
            i += 1
            continue
        nxt = word[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
            continue
        if nxt != "{":
            out.append(ch)
            i += 1
            continue
        close = word.find("}", i + 2)
        if close < 0:
            out.append(word[i:])
            break
        out.append(_lookup(word[i + 2:close], env, word[i:close + 1]))
        i = close + 1
    return "".join(out)


def _lookup(body: str, env: Mapping[str, str], literal: str) -> str:
    for op in (":-", ":+"):
        name, found, alt = body.partition(op)
        if found and is_env_name(name):
            value = env.get(name, "")
            if op == ":-":
                return value if value else alt
            return alt if value else ""
    if is_env_name(body):
        return env.get(body, "")
    return literal
