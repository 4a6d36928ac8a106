"""Shared CLI plumbing: user errors become one red line and exit code 2, never a traceback;
the consoles, table printing, JSON output, and the options several command groups share."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ppfr.errors import InputError, PPFRError, missing_extra

F = TypeVar("F", bound=Callable)
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

#: the gallery store of ``ppfr serve`` and ``ppfr keys`` when neither --db nor $PPFR_DB says
DEFAULT_DB = "sqlite:///ppfr-gallery.db"
DbOpt = Annotated[
    str,
    typer.Option("--db", envvar="PPFR_DB", help="Gallery store URL (sqlite:/// or postgresql://)."),
]
#: --model of the commands that run only the client's protect (protect, attack)
ClientModelOpt = Annotated[Path, typer.Option("--model", help="Model bundle (client part used).")]


def print_table(table: Table) -> None:
    """Print a rich table; off a terminal (logs, pipes) rich would squeeze it into 80
    columns and cut cells, so there it gets the room it needs instead."""
    (console if console.is_terminal else Console(width=240)).print(table)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON; an unwritable path is the user's error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n")
    except OSError as e:
        raise InputError(f"{path}: cannot write JSON ({e})") from None


def friendly(fn: F) -> F:
    """Decorator for CLI commands: report :class:`PPFRError` as ``error: ...`` and exit 2.

    A missing module of an optional extra (``ppfr serve`` without ``ppfr[serve]``) is
    reported the same way, naming the extra to install (:func:`ppfr.errors.missing_extra`).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PPFRError as e:
            # escaped: messages quote things like [stages.residue] that are not markup
            err_console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False)
            raise typer.Exit(2) from None
        except ImportError as e:
            # a lean install (no ppfr[serve]): say which extra to install, not a traceback
            clear = missing_extra(e)
            if clear is None:
                raise
            err_console.print(f"[red]error:[/red] {escape(str(clear))}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]
