"""coreos-cloudinit's address variables in user-data: `$private_ipv4` and friends (pure).

coreos-cloudinit replaces them in the whole user-data text before reading it, so they
work anywhere: etcd2 URLs, file contents, unit files. A variable written with a
backslash before it (`\\$private_ipv4`) is not replaced; the backslash is dropped and
`$private_ipv4` stays in the text (for a unit or script that expands it itself).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

VARIABLES = ("private_ipv4", "public_ipv4", "private_ipv6", "public_ipv6")
# The environment variables CoreOS (and coreos-vagrant's /etc/environment) gave them in.
ENVIRONMENT = {name: f"COREOS_{name.upper()}" for name in VARIABLES}

_VARIABLE = re.compile(r"(\\?)\$(" + "|".join(VARIABLES) + r")")


def substitute(text: str, values: Mapping[str, str]) -> str:
    """Every unescaped `$name` with a value in `values` replaced by it; `\\$name` becomes
    `$name`. Variables without a value stay as they are."""
    def replace(match: re.Match) -> str:
        escaped, name = match.group(1), match.group(2)
        if escaped:
            return "$" + name
        return values.get(name, match.group(0))
    return _VARIABLE.sub(replace, text)


def variables_used(text: str) -> list[str]:
    """The variables the text would have replaced (escaped ones do not count), in order."""
    seen: dict[str, None] = {}
    for match in _VARIABLE.finditer(text):
        if not match.group(1):
            seen[match.group(2)] = None
    return list(seen)
