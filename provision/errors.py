"""User-facing errors: every problem a user can cause carries a position.

A `Problem` is one compiler-style line (`file:line:col: message`). A
`UserError` holds all problems found in one pass, so a user fixes them in one
round instead of one per run. The CLI prints them and exits with status 2;
anything else that escapes is an internal bug and may show a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

EXIT_USAGE = 2
EXIT_FAILED = 1


@dataclass(frozen=True, order=True)
class Problem:
    file: str
    line: int | None
    col: int | None
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.col is not None:
                where += f":{self.col}"
        prefix = "" if self.severity == "error" else f"{self.severity}: "
        return f"{where}: {prefix}{self.message}"


class UserError(Exception):
    """One or more problems the user can fix; exit status 2."""

    exit_code = EXIT_USAGE

    def __init__(self, problems: Iterable[Problem] | str) -> None:
        if isinstance(problems, str):
            problems = [Problem("provision", None, None, problems)]
        self.problems = sorted(set(problems), key=_problem_order)
        super().__init__("\n".join(str(p) for p in self.problems))


class OperationFailed(Exception):
    """The tool was used correctly but the operation did not succeed; exit status 1."""

    exit_code = EXIT_FAILED


def _problem_order(problem: Problem) -> tuple:
    return (problem.file, problem.line or 0, problem.col or 0, problem.message)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A ' (did you mean `x`?)' suffix, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""
