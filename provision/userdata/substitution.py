r"""`$private_ipv4` and friends, substituted the way coreos-cloudinit v1.13.0 does at boot.

coreos-cloudinit replaces each variable in the raw user-data text before
parsing it, one variable at a time, with two regular expressions:

1. `([^\\]|^)$var` → the value: an occurrence counts as escaped when the
   character before it is a backslash. The character before is consumed by
   the match, so of two adjacent occurrences (`$var$var`) only the first is
   replaced in one pass.
2. `\$var` → `$var`: the escape is dropped, the variable stays literal.

`boot_substitute` is that, exactly. `pre_substitute` is what
`provision render --substitute` writes: text that coreos-cloudinit's boot
substitution turns into the same result as the unsubstituted original, so
escaped variables (`\$private_ipv4`) are kept, escape and all.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

PRIVATE_IPV4 = "$private_ipv4"
PUBLIC_IPV4 = "$public_ipv4"
PRIVATE_IPV6 = "$private_ipv6"
PUBLIC_IPV6 = "$public_ipv6"
VARIABLES = (PUBLIC_IPV4, PRIVATE_IPV4, PUBLIC_IPV6, PRIVATE_IPV6)


def boot_substitute(text: str, values: Mapping[str, str]) -> str:
    """coreos-cloudinit's Environment.Apply: every variable in `values`, escapes honoured."""
    for variable, value in values.items():
        name = re.escape(variable)
        text = re.sub(r"([^\\]|^)" + name, lambda m, v=value: m.group(1) + v, text)
        text = re.sub(r"\\" + name, lambda _m, v=variable: v, text)
    return text


def pre_substitute(text: str, values: Mapping[str, str]) -> str:
    """Substitute now so that coreos-cloudinit's boot pass changes nothing that matters.

    The boot result of the original, with every variable it leaves literal
    escaped again, so a second (boot-time) pass keeps them literal.
    """
    booted = boot_substitute(text, values)
    for variable in values:
        booted = booted.replace(variable, "\\" + variable)
    return booted


# The same variables by name, as the applier's flags and coreos-vagrant's /etc/environment
# (COREOS_PRIVATE_IPV4=…) spell them.
NAMES = ("private_ipv4", "public_ipv4", "private_ipv6", "public_ipv6")
ENVIRONMENT = {name: f"COREOS_{name.upper()}" for name in NAMES}


def substitute(text: str, values: Mapping[str, str]) -> str:
    """`boot_substitute` with the values given by name (`{"private_ipv4": "10.0.0.1"}`);
    variables without a value stay as written."""
    return boot_substitute(text, {"$" + name: value for name, value in values.items()})


def variables_used(text: str) -> list[str]:
    """The names of the variables boot substitution would replace (escaped ones do not
    count), in order of first use."""
    seen: dict[str, None] = {}
    pattern = re.compile(r"(?:[^\\]|^)\$(" + "|".join(NAMES) + r")")
    for match in pattern.finditer(text):
        seen[match.group(1)] = None
    return list(seen)

