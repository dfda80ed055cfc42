"""systemd's `%x` specifier syntax, shared by [X-Fleet] values and the process runner.

Each caller brings its own table (X-Fleet knows %n %N %p %i; Exec lines also
%m %H …); the expansion rules and their error messages live only here.
"""

from __future__ import annotations

from collections.abc import Mapping


class SpecifierError(ValueError):
    """An unknown specifier or a lone trailing `%`."""


def expand_specifiers(value: str, table: Mapping[str, str]) -> str:
    """Replace `%x` specifiers from `table` (which should map "%" to "%")."""
    out: list[str] = []
    start = 0
    while (at := value.find("%", start)) >= 0:
        out.append(value[start:at])
        code = value[at + 1:at + 2]
        if not code:
            raise SpecifierError("value ends with a lone '%'; write %% for a literal %")
        if code not in table:
            known = ", ".join(f"%{key}" for key in table if key != "%")
            raise SpecifierError(f"unknown specifier %{code} at position {at + 1}; known: "
                                 f"{known} and %% (a literal %)")
        out.append(table[code])
        start = at + 2
    out.append(value[start:])
    return "".join(out)
