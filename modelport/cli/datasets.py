"""CLI: datasets (upload with a progress bar) and the keys that protect them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TransferSpeedColumn

from modelport.cli.client import Client, CliError
from modelport.cli.common import JsonOpt, client, handle_errors
from modelport.cli.output import Columns, console, err_console, human_size, kv, print_json, table

datasets = typer.Typer(help="Training data, encrypted at rest (workspace key + platform key).", no_args_is_help=True)
workspace_key = typer.Typer(help="The workspace key (inner encryption layer).", no_args_is_help=True)
cmk = typer.Typer(help="Customer-managed key for the workspace (owners).", no_args_is_help=True)
platform_key = typer.Typer(help="The platform key (outer encryption layer; platform admin).", no_args_is_help=True)

CHUNK = 1024 * 1024
DS_ROWS: Columns = [("NAME", "name"), ("ID", "id"), ("FORMAT", "format"), ("SIZE", lambda d: human_size(d["size"])),
           ("ROWS", "rows"), ("SHA256", "sha256"), ("CREATED", "created_at")]


@datasets.command("upload")
@handle_errors
def upload(ctx: typer.Context, file: Path, name: Annotated[str, typer.Option(help="Dataset name.")],
           format: Annotated[str | None, typer.Option(help="chat | prompt_completion (default: detect)")] = None,
           json: JsonOpt = False) -> None:
    """Upload a JSONL file; it is validated and encrypted as it streams."""
    if not file.is_file():
        raise CliError(f"{file} is not a file.")
    size = file.stat().st_size
    c = client(ctx)
    params = {"name": name, **({"format": format} if format else {})}
    progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                        console=err_console)

    def body(task: TaskID) -> Iterator[bytes]:
        with open(file, "rb") as fh:
            while chunk := fh.read(CHUNK):
                progress.advance(task, len(chunk))
                yield chunk

    with progress, c.http() as http:
        task = progress.add_task(f"uploading {file.name}", total=size)
        try:
            r = http.post("/api/v1/datasets", params=params, content=body(task), timeout=None,
                          headers={"Content-Type": "application/jsonl", "Content-Length": str(size)})
        except httpx.ConnectError as exc:
            raise CliError(f"Cannot reach modelport at {c.url}.") from exc
    d = Client.check(r)
    if json:
        return print_json(d)
    console.print(f"Uploaded dataset [bold]{d['name']}[/bold] ({d['id']}): {d['rows']} rows, {human_size(d['size'])}, "
                  "encrypted at rest.")


@datasets.command("list")
@handle_errors
def list_(ctx: typer.Context, json: JsonOpt = False) -> None:
    """List the datasets of the current workspace."""
    rows = client(ctx).request("GET", "/api/v1/datasets")
    if json:
        return print_json(rows)
    table(rows, DS_ROWS)


@datasets.command("show")
@handle_errors
def show(ctx: typer.Context, name: str, json: JsonOpt = False) -> None:
    """Show a dataset: format, size, rows, sha256 (never its content)."""
    d = client(ctx).request("GET", f"/api/v1/datasets/{name}")
    if json:
        return print_json(d)
    kv(d, [("Name", "name"), ("ID", "id"), ("Format", "format"), ("Size", lambda x: human_size(x["size"])),
           ("Rows", "rows"), ("SHA256", "sha256"), ("Created", "created_at")])


@datasets.command("delete")
@handle_errors
def delete(ctx: typer.Context, name: str,
           yes: Annotated[bool, typer.Option("--yes", help="Confirm without asking.")] = False,
           json: JsonOpt = False) -> None:
    """Delete a dataset: its keys are destroyed, nothing left can be decrypted."""
    if not yes:
        typer.confirm(f"Delete dataset '{name}'? Its data keys are destroyed; this cannot be undone.", abort=True)
    client(ctx).request("DELETE", f"/api/v1/datasets/{name}")
    if json:
        return print_json({"deleted": name})
    console.print(f"Deleted dataset {name}; its data keys were destroyed.")


KEY_ROWS: Columns = [("Provider", "provider"), ("Key", "key_ref"), ("Customer-managed", "cmk"), ("State", "state"),
            ("Latest version", "latest_version"), ("Min decryption version", "min_decryption_version")]


def _key(ctx: typer.Context, method: str, path: str, json: bool, body: dict | None = None) -> None:
    data = client(ctx).request(method, path, json=body, timeout=None)
    if json:
        return print_json(data)
    if "rewrapped" in data:
        console.print(f"Rewrapped {data['rewrapped']} data keys to the newest version "
                      f"({data['unchanged']} already current).")
    else:
        kv(data, KEY_ROWS)


@workspace_key.command("show")
@handle_errors
def wk_show(ctx: typer.Context, json: JsonOpt = False) -> None:
    """Show the workspace key: provider, state, latest and minimum decryption version."""
    _key(ctx, "GET", "/api/v1/workspace-key", json)


@workspace_key.command("rotate")
@handle_errors
def wk_rotate(ctx: typer.Context, json: JsonOpt = False) -> None:
    """New version for new data; old versions still decrypt until retired."""
    _key(ctx, "POST", "/api/v1/workspace-key/rotate", json)


@workspace_key.command("rewrap")
@handle_errors
def wk_rewrap(ctx: typer.Context, json: JsonOpt = False) -> None:
    """Move every stored data key to the newest version (the data is not decrypted)."""
    _key(ctx, "POST", "/api/v1/workspace-key/rewrap", json)


@workspace_key.command("retire")
@handle_errors
def wk_retire(ctx: typer.Context, below: Annotated[int, typer.Option(help="Minimum decryption version.")],
              force: bool = False, json: JsonOpt = False) -> None:
    """Retire workspace-key versions below --below (refused while data still needs them; --force)."""
    _key(ctx, "POST", "/api/v1/workspace-key/min-decryption-version", json, {"version": below, "force": force})


@cmk.command("register")
@handle_errors
def cmk_register(ctx: typer.Context,
                 provider: Annotated[str, typer.Option(help="aws | local")] = "local",
                 key_ref: Annotated[str | None, typer.Option(help="Key id or ARN (omit with local: a new key)")] = None,
                 json: JsonOpt = False) -> None:
    """Register a customer-managed key; new data is wrapped under it (run rewrap for old data)."""
    _key(ctx, "POST", "/api/v1/cmk", json, {"provider": provider, "key_ref": key_ref})


@cmk.command("show")
@handle_errors
def cmk_show(ctx: typer.Context, json: JsonOpt = False) -> None:
    """Show the workspace's customer-managed key (the workspace key, when one is registered)."""
    _key(ctx, "GET", "/api/v1/workspace-key", json)


@cmk.command("rotate")
@handle_errors
def cmk_rotate(ctx: typer.Context, json: JsonOpt = False) -> None:
    """Rotate the customer-managed key: a new version wraps new data keys."""
    _key(ctx, "POST", "/api/v1/cmk/rotate", json)


@cmk.command("disable")
@handle_errors
def cmk_disable(ctx: typer.Context, json: JsonOpt = False) -> None:
    """Every read of this workspace's encrypted data fails until it is enabled again."""
    _key(ctx, "POST", "/api/v1/cmk/disable", json)


@cmk.command("enable")
@handle_errors
def cmk_enable(ctx: typer.Context, json: JsonOpt = False) -> None:
    """Enable the customer-managed key again: reads and writes work again."""
    _key(ctx, "POST", "/api/v1/cmk/enable", json)


@cmk.command("remove")
@handle_errors
def cmk_remove(ctx: typer.Context, json: JsonOpt = False) -> None:
    """Go back to the platform-held workspace key (stored data keys are rewrapped)."""
    _key(ctx, "DELETE", "/api/v1/cmk", json)


@platform_key.command("show")
@handle_errors
def pk_show(ctx: typer.Context, json: JsonOpt = False) -> None:
    """Show the platform key (platform admin): state, latest and minimum decryption version."""
    _key(ctx, "GET", "/api/v1/platform-key", json)


@platform_key.command("rotate")
@handle_errors
def pk_rotate(ctx: typer.Context, json: JsonOpt = False) -> None:
    """Rotate the platform key (platform admin): a new version wraps new data keys."""
    _key(ctx, "POST", "/api/v1/platform-key/rotate", json)


@platform_key.command("rewrap")
@handle_errors
def pk_rewrap(ctx: typer.Context, json: JsonOpt = False) -> None:
    """Move every stored data key to the newest platform-key version (platform admin; no data is decrypted)."""
    _key(ctx, "POST", "/api/v1/platform-key/rewrap", json)


@platform_key.command("retire")
@handle_errors
def pk_retire(ctx: typer.Context, below: Annotated[int, typer.Option(help="Minimum decryption version.")],
              force: bool = False, json: JsonOpt = False) -> None:
    """Retire platform-key versions below --below (platform admin; refused while data needs them; --force)."""
    _key(ctx, "POST", "/api/v1/platform-key/min-decryption-version", json, {"version": below, "force": force})
