"""Tables as fleetctl prints them, and the same rows as JSON.

A `Column` knows how to show a row as a cell (short or `--full`) and as a JSON
value; a `Table` is chosen columns plus rows. Text layout follows fleetctl's
tab-aligned output: every column but the last is padded to the next tab stop
(multiples of 8) leaving at least two spaces, so columns line up as in fleet
while staying plain spaces that copy and `awk` well.
"""

from __future__ import annotations

import json
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence

from fleetd.fleetctl.errors import UsageError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from typing import Any

GAP = 2


# Named tuples rather than dataclasses: see fleetd.fleetctl.model.
class Column(namedtuple("Column", ("name", "cell", "value"))):
    __slots__ = ()
    name: str  # lowercase field name used by --fields; the header is its upper case
    cell: Callable[[Any, bool], str]  # (row, full) -> text
    value: Callable[[Any], Any]  # row -> JSON value (never abbreviated)

    @property
    def header(self) -> str:
        return self.name.upper()


class Table(namedtuple("Table", ("columns", "rows"))):
    __slots__ = ()
    columns: tuple[Column, ...]
    rows: tuple[Any, ...]


def choose_columns(spec: str | None, available: Mapping[str, Column],
                   default: Sequence[str]) -> tuple[Column, ...]:
    """`--fields a,b`: pick and order columns; unknown or empty names are usage errors."""
    names = list(default) if spec is None else [part.strip() for part in spec.split(",")]
    valid = ",".join(sorted(available))
    if not any(names):
        raise UsageError(f"--fields is empty; choose from {valid}")
    chosen = []
    for name in names:
        column = available.get(name.lower())
        if column is None:
            raise UsageError(f"Invalid key in output format: {name!r}; valid fields are "
                             f"{valid}")
        chosen.append(column)
    return tuple(chosen)


def layout(lines: Sequence[Sequence[str]]) -> str:
    """Align rows of cells; the last column is never padded (no trailing blanks)."""
    if not lines:
        return ""
    count = max(len(line) for line in lines)
    widths = [max((len(line[i]) for line in lines if i < len(line)), default=0)
              for i in range(count)]
    if all(len(line) == count for line in lines):  # a table's lines: one pass per column
        padded = [[cell.ljust(width + GAP) for cell in column]
                  for column, width in zip(zip(*lines, strict=True), widths[:-1], strict=False)]
        padded.append([line[-1] for line in lines])
        return "".join(["".join(cells).rstrip() + "\n" for cells in zip(*padded, strict=True)])
    out = []
    for line in lines:
        cells = [cell.ljust(widths[i] + GAP) if i < len(line) - 1 else cell
                 for i, cell in enumerate(line)]
        out.append("".join(cells).rstrip() + "\n")
    return "".join(out)


def render_table(table: Table, full: bool = False, legend: bool = True) -> str:
    columns = [[_one_line(column.cell(row, full)) for row in table.rows]
               for column in table.columns]
    lines: list[Sequence[str]] = list(zip(*columns, strict=True)) if table.rows else []
    if legend:
        lines.insert(0, [column.header for column in table.columns])
    return layout(lines)


def render_json(table: Table) -> str:
    document = [{column.name: column.value(row) for column in table.columns}
                for row in table.rows]
    return json.dumps(document, indent=2, sort_keys=False) + "\n"


def render(table: Table, output: str, full: bool = False, legend: bool = True) -> str:
    if output == "json":
        return render_json(table)
    return render_table(table, full=full, legend=legend)


def _one_line(text: str) -> str:
    # A newline or tab inside a cell would break the columns for every later row.
    if "\t" in text or "\n" in text:
        return text.replace("\t", " ").replace("\n", " ")
    return text or "-"
