"""``ppfr keys``: the service's API keys, straight in its gallery store.

ppfr keys create --gallery G [--gallery G2] [--db URL]      # prints the key once
ppfr keys revoke KEY_ID [--db URL]
ppfr keys list [--db URL]

The database URL defaults to ``$PPFR_DB`` or ``sqlite:///ppfr-gallery.db``.
"""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.table import Table

from ppfr.cli._common import DEFAULT_DB, DbOpt, console, friendly, print_table
from ppfr.errors import InputError

keys_app = typer.Typer(no_args_is_help=True, help="Create, list and revoke API keys.")


@keys_app.command("create")
@friendly
def keys_create(
    gallery: Annotated[list[str], typer.Option("--gallery", help="Gallery the key may use.")],
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Create a key; the full key is printed once (only its hash is stored)."""
    # deferred: the gallery store and its database drivers are not loaded for `ppfr --help`
    from ppfr.serve.auth import create_key
    from ppfr.serve.store import open_store

    with open_store(db) as store:
        key_id, token = create_key(store, gallery)
    typer.echo(token)  # stdout: the key alone, for scripts
    typer.echo(f"# key id {key_id}, galleries: {', '.join(gallery)}; shown once", err=True)


@keys_app.command("revoke")
@friendly
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id (ppfr_<key_id>_...).")],
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Revoke a key: requests with it get 401 from then on."""
    # deferred: the gallery store and its database drivers are not loaded for `ppfr --help`
    from ppfr.serve.store import open_store

    with open_store(db) as store:
        if not store.revoke_api_key(key_id):
            raise InputError(f"no API key with id {key_id!r}")
    console.print(f"revoked {key_id}")


@keys_app.command("list")
@friendly
def keys_list(db: DbOpt = DEFAULT_DB) -> None:
    """List keys (ids, galleries, state); secrets are never stored."""
    # deferred: the gallery store and its database drivers are not loaded for `ppfr --help`
    from ppfr.serve.store import open_store

    with open_store(db) as store:
        records = store.list_api_keys()
    table = Table()
    for col in ("key id", "galleries", "state", "created (UTC)"):
        table.add_column(col)
    for r in records:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.created))
        table.add_row(
            r.key_id, ", ".join(r.galleries), "revoked" if r.revoked else "active", created
        )
    print_table(table)


def register(app: typer.Typer) -> None:
    """Add the ``keys`` group to the ``ppfr`` app."""
    app.add_typer(keys_app, name="keys")
