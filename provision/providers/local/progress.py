"""Boot progress: one line per node (etcd member healthy, fleet machine registered, units).

On a terminal the table redraws in place (rich Live); otherwise each change
is printed once as a plain line, so logs and CI output stay readable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Console
from rich.live import Live
from rich.table import Table

COLUMNS = ("etcd", "fleet", "units")
_STYLE = {"ok": "green", "failed": "red", "stopped": "dim", "waiting": "yellow"}


@dataclass
class Row:
    name: str
    ip: str
    cells: dict[str, tuple[str, str]] = field(default_factory=dict)  # column -> (kind, text)


class Progress:
    def __init__(self, rows: list[tuple[str, str]], console: Console | None = None,
                 title: str = "") -> None:
        self.console = console or Console(stderr=True)
        self.title = title
        self.rows = {name: Row(name, ip, {c: ("waiting", "…") for c in COLUMNS})
                     for name, ip in rows}
        self._live: Live | None = None

    def __enter__(self) -> Progress:
        if self.console.is_terminal:
            self._live = Live(self._table(), console=self.console, refresh_per_second=8,
                              transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.__exit__(None, None, None)
            self._live = None

    def set(self, node: str, column: str, kind: str, text: str) -> None:
        row = self.rows[node]
        if row.cells.get(column) == (kind, text):
            return
        row.cells[column] = (kind, text)
        if self._live is not None:
            self._live.update(self._table())
        elif kind != "waiting":
            self.console.print(f"{node} ({row.ip}): {column} {text}", markup=False,
                               highlight=False)

    def note(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)

    def _table(self) -> Table:
        table = Table(title=self.title or None, title_justify="left", box=None,
                      pad_edge=False)
        table.add_column("node")
        table.add_column("ip")
        for column in COLUMNS:
            table.add_column(column)
        for row in self.rows.values():
            cells = [f"[{_STYLE.get(kind, '')}]{_escape(text)}[/]"
                     for kind, text in (row.cells[c] for c in COLUMNS)]
            table.add_row(row.name, row.ip, *cells)
        return table


def _escape(text: str) -> str:
    return text.replace("[", r"\[")
