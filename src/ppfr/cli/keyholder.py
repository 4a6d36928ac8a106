"""``ppfr keyholder``: the secret key of an encrypted gallery, and the service that uses it.

ppfr keyholder create --key-file K [--threshold T]   # a new key pair (file mode 0600)
ppfr keyholder rotate --key-file K                   # new key pair: re-enrol every gallery
ppfr keyholder revoke --key-file K                   # destroy the key
ppfr keyholder public --key-file K --out P           # the public context, for enrolment
ppfr keyholder token create|revoke|list --key-file K # bearer tokens of the matching servers
ppfr keyholder serve --key-file K [--host H --port P]

docs/templates.md ("Encrypted gallery") describes the scheme and the deployment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ppfr.cli._common import console, friendly
from ppfr.errors import InputError

KeyFileOpt = Annotated[
    Path,
    typer.Option("--key-file", envvar="PPFR_KEY_FILE", help="The key holder's key file."),
]

keyholder_app = typer.Typer(
    no_args_is_help=True, help="The key holder of an encrypted gallery: keys, tokens, service."
)
token_app = typer.Typer(no_args_is_help=True, help="Bearer tokens of the matching servers.")
keyholder_app.add_typer(token_app, name="token")


@keyholder_app.command("create")
@friendly
def create(
    key_file: KeyFileOpt,
    threshold: Annotated[
        float, typer.Option(help="Least ternary cosine released (calibrate it).")
    ] = 0.0,
    max_k: Annotated[int, typer.Option(help="Most rows released per identify.")] = 100,
    force: Annotated[bool, typer.Option(help="Overwrite an existing key file.")] = False,
) -> None:
    """Create a key pair (CKKS, 128-bit parameters) in a new key file."""
    # deferred: TenSEAL and FastAPI load only for the key holder's commands
    from ppfr.serve.keyholder import create_key_file

    holder = create_key_file(key_file, threshold=threshold, max_k=max_k, force=force)
    console.print(f"created key {holder.key_id} in {key_file}", highlight=False)


@keyholder_app.command("rotate")
@friendly
def rotate(key_file: KeyFileOpt) -> None:
    """Replace the key pair (renewal); galleries under the old key must be re-enrolled."""
    # deferred: TenSEAL and FastAPI load only for the key holder's commands
    from ppfr.serve.keyholder import rotate_key_file

    old, new = rotate_key_file(key_file)
    console.print(
        f"rotated {old} -> {new.key_id}; re-enrol every gallery from its clients' templates",
        highlight=False,
    )


@keyholder_app.command("revoke")
@friendly
def revoke(
    key_file: KeyFileOpt,
    yes: Annotated[
        bool, typer.Option("--yes", help="Confirm: the key cannot be recovered.")
    ] = False,
) -> None:
    """Destroy the key: every gallery under it becomes undecryptable for good."""
    # deferred: TenSEAL and FastAPI load only for the key holder's commands
    from ppfr.serve.keyholder import revoke_key_file

    if not yes:
        raise InputError("revoking destroys the key for good; pass --yes to confirm")
    console.print(f"revoked key {revoke_key_file(key_file)}", highlight=False)


@keyholder_app.command("public")
@friendly
def public(
    key_file: KeyFileOpt,
    out: Annotated[Path, typer.Option("--out", help="Where to write the public context.")],
) -> None:
    """Write the public context (no secret key) for the enrolling, matching side."""
    # deferred: TenSEAL and FastAPI load only for the key holder's commands
    from ppfr.templates.encrypted import KeyHolder

    holder, _ = KeyHolder.load(key_file)
    out.write_bytes(holder.public_bytes())
    console.print(f"public context of key {holder.key_id} -> {out}", highlight=False)


@token_app.command("create")
@friendly
def token_create(key_file: KeyFileOpt) -> None:
    """Create a bearer token; printed once on stdout (only its hash is kept)."""
    # deferred: TenSEAL and FastAPI load only for the key holder's commands
    from ppfr.serve.keyholder import add_token

    tid, token = add_token(key_file)
    typer.echo(token)
    typer.echo(f"# token id {tid}; shown once", err=True)


@token_app.command("revoke")
@friendly
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="The token id (kh_<id>_...).")],
    key_file: KeyFileOpt,
) -> None:
    """Revoke a token: requests with it get 401 from then on."""
    # deferred: TenSEAL and FastAPI load only for the key holder's commands
    from ppfr.serve.keyholder import revoke_token

    revoke_token(key_file, token_id)
    console.print(f"revoked token {token_id}", highlight=False)


@token_app.command("list")
@friendly
def token_list(key_file: KeyFileOpt) -> None:
    """List token ids and states (secrets are never stored)."""
    # deferred: TenSEAL and FastAPI load only for the key holder's commands
    from ppfr.serve.keyholder import list_tokens

    for t in list_tokens(key_file):
        console.print(f"{t['id']}  {'revoked' if t['revoked'] else 'active'}", highlight=False)


@keyholder_app.command("serve")
@friendly
def serve(
    key_file: KeyFileOpt,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8100,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
) -> None:
    """Run the key holder service (FastAPI on uvicorn)."""
    import uvicorn

    # deferred: TenSEAL and FastAPI load only for the key holder's commands
    from ppfr.serve.keyholder import create_keyholder_app

    app = create_keyholder_app(key_file)
    holder = app.state.keyholder.current()
    console.print(
        f"key holder for key {holder.key_id} on http://{host}:{port} "
        f"(threshold {holder.threshold}, max_k {holder.max_k})",
        highlight=False,
    )
    uvicorn.run(app, host=host, port=port, access_log=False, log_level=log_level.lower())


def register(app: typer.Typer) -> None:
    """Add the ``keyholder`` group to the ``ppfr`` app."""
    app.add_typer(keyholder_app, name="keyholder")
