"""Shared CLI plumbing: user errors become one red line and exit code 2, never a traceback."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ppfr.errors import PPFRError

F = TypeVar("F", bound=Callable)
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def print_table(table: Table) -> None:
    """Print a rich table; off a terminal (logs, pipes) rich would squeeze it into 80
    columns and cut cells, so there it gets the room it needs instead."""
    (console if console.is_terminal else Console(width=240)).print(table)


def friendly(fn: F) -> F:
    """Decorator for CLI commands: report :class:`PPFRError` as ``error: ...`` and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PPFRError as e:
            # escaped: messages quote things like [stages.residue] that are not markup
            err_console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]
