"""Write YAML scalars by hand so templates control layout and values stay exact.

Used as Jinja2 filters by the cloud-config template. A value is written plain
when YAML 1.1 reads it back as the same string (seed-like `http://$private_ipv4:2379`),
double-quoted (JSON escaping, a YAML subset) otherwise; multi-line text goes into
a literal block when it survives one exactly.

A value holding a backslash is single-quoted (where backslashes are literal) when it
can be: coreos-cloudinit substitutes `$private_ipv4` in the raw text and takes a
backslash before it as an escape, which a double-quoted `\\` would break.
"""

from __future__ import annotations

import json
import re

_PLAIN = re.compile(r"^[A-Za-z0-9$/_.][A-Za-z0-9$/_.,:=@%+()-]*$")
_YAML11_SPECIAL = re.compile(
    r"^(y|n|yes|no|on|off|true|false|null|~|"
    r"[-+]?(\.[0-9]+|[0-9][0-9_]*(\.[0-9_]*)?)([eE][-+]?[0-9]+)?|"
    r"[-+]?0x[0-9a-fA-F_]+|[-+]?0b[01_]+|[-+]?[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?|"
    r"\.(inf|nan)|[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}.*)$",
    re.IGNORECASE,
)
# Characters a literal block cannot carry verbatim (line breaks YAML would fold,
# or characters YAML does not allow unescaped).
_NOT_BLOCK_SAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x84\x86-\x9f\r\x85\u2028\u2029\ufeff"
                             r"\ud800-\udfff\ufffe\uffff]")


def scalar(value: object) -> str:
    """One YAML scalar on one line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    text = str(value)
    if _PLAIN.fullmatch(text) and not _YAML11_SPECIAL.fullmatch(text) and ": " not in text \
            and not text.endswith(":"):
        return text
    if "\\" in text and _single_quotable(text):
        return "'" + text.replace("'", "''") + "'"
    return quoted(text)


def _single_quotable(text: str) -> bool:
    """One line of characters YAML allows unescaped, so a single-quoted scalar keeps it."""
    return all(char == "\t" or _printable(ord(char)) for char in text)


def _printable(code: int) -> bool:
    return 0x20 <= code <= 0x7E or (0xA0 <= code <= 0xD7FF and code not in (0x2028, 0x2029)) \
        or 0xE000 <= code <= 0xFFFD and code != 0xFEFF or code >= 0x10000


def quoted(text: str) -> str:
    """A YAML double-quoted scalar; escapes whatever YAML would not read back verbatim."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif _printable(code):
            out.append(char)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        else:
            out.append(f"\\u{code:04x}")
    out.append('"')
    return "".join(out)


def block(text: str, indent: int) -> str:
    """A literal block (`|`) for multi-line text, else a quoted scalar."""
    if "\n" not in text or _NOT_BLOCK_SAFE.search(text) or text.strip(" \n\t") == "" \
            or "\t" in text.split("\n", 1)[0][:1]:
        return scalar(text)
    body = text[:-1] if text.endswith("\n") else text
    lines = body.split("\n")
    if any(line.strip(" ") == "" and line != "" for line in lines):
        return scalar(text)  # whitespace-only lines are not kept by a literal block
    if text.endswith("\n\n"):
        chomp = "+"
    elif text.endswith("\n"):
        chomp = ""
    else:
        chomp = "-"
    # Content sits two columns right of its key; when the first non-empty line
    # starts with a space, YAML cannot guess that, so say it (relative to the key).
    first = next((line for line in lines if line), "")
    indicator = "2" if first.startswith(" ") else ""
    pad = " " * indent
    out = [f"|{indicator}{chomp}"]
    for line in lines:
        out.append(pad + line if line else "")
    return "\n".join(out)
