"""Shared CLI plumbing: user errors become one red line and exit code 2, never a traceback."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import typer
from rich.console import Console

from ppfr.errors import PPFRError

F = TypeVar("F", bound=Callable)
err_console = Console(stderr=True, soft_wrap=True)


def friendly(fn: F) -> F:
    """Decorator for CLI commands: report :class:`PPFRError` as ``error: ...`` and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PPFRError as e:
            err_console.print(f"[red]error:[/red] {e}", highlight=False, markup=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]
