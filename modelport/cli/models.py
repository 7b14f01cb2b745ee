"""CLI: the model catalog (list, show, import, download, deprecate, delete)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TransferSpeedColumn

from modelport.cli.client import Client, CliError, error_from
from modelport.cli.common import JsonOpt, client, handle_errors
from modelport.cli.output import console, err_console, human_size, kv, markdown, print_json, table, terminal_safe

models = typer.Typer(help="The model catalog.", no_args_is_help=True)

CHUNK = 1024 * 1024


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    console=err_console, transient=False)


@models.command("list")
@handle_errors
def list_models(ctx: typer.Context,
                task: Annotated[str | None, typer.Option(help="chat-completion | embeddings")] = None,
                publisher: str | None = None, license: str | None = None,
                format: Annotated[str | None, typer.Option(help="gguf | safetensors")] = None,
                curated: Annotated[bool | None, typer.Option("--curated/--not-curated")] = None,
                owner: Annotated[str | None, typer.Option(help="platform | workspace")] = None,
                search: Annotated[str | None, typer.Option("--search", "-q")] = None,
                limit: int = 50, cursor: str | None = None, json: JsonOpt = False) -> None:
    """List the models you can see: catalog-wide ones and your workspace's private ones."""
    params = {"task": task, "publisher": publisher, "license": license, "format": format, "curated": curated,
              "owner": owner, "q": search, "limit": limit, "cursor": cursor}
    page = client(ctx).request("GET", "/api/v1/models", params={k: v for k, v in params.items() if v is not None})
    if json:
        return print_json(page)
    table(page["data"], [("NAME", "name"), ("VERSION", "version"), ("TASK", "task"), ("FORMAT", "format"),
                         ("SIZE", lambda m: human_size(m["size_bytes"])), ("LICENSE", lambda m: m["license"]["spdx"]),
                         ("PUBLISHER", "publisher"), ("OWNER", "owner"), ("CURATED", "curated"),
                         ("SCAN", lambda m: m["scan"]["status"]),
                         ("STATE", lambda m: "deprecated" if m["deprecated"] else "active")])
    if page.get("next_cursor"):
        err_console.print(f"More: --cursor {page['next_cursor']}")


@models.command("show")
@handle_errors
def show_model(ctx: typer.Context, name: str, version: str | None = None, json: JsonOpt = False) -> None:
    """Show a model: its card, licence, files with their sha256, and the artifact scan."""
    m = client(ctx).request("GET", f"/api/v1/models/{name}", params={"version": version} if version else None)
    if json:
        return print_json(m)
    kv(m, [("Name", "name"), ("Version", "version"), ("ID", "id"), ("Publisher", "publisher"),
           ("License", lambda d: f"{d['license']['spdx']} {d['license']['url'] or ''}".strip()), ("Task", "task"),
           ("Format", "format"), ("Size", lambda d: human_size(d["size_bytes"])), ("Owner", "owner"),
           ("Source", "source"), ("Curated", "curated"), ("Downloadable", "downloadable"),
           ("Fine-tunable", "finetunable"), ("Deployment types", "deployment_types"),
           ("Deprecated", "deprecated"), ("Scan", lambda d: d["scan"]["status"])])
    table(m["files"], [("FILE", "path"), ("SIZE", lambda f: human_size(f["size"])), ("SHA256", "sha256")])
    _print_findings(m)
    if m.get("card"):
        console.rule("Model card")
        markdown(m["card"])


def _print_findings(m: dict) -> None:
    for f in m["scan"]["findings"]:  # file names come from the uploader: shown as text, never as markup
        err_console.print(f"[yellow]scan[/yellow] {escape(terminal_safe(f['file']))}: "
                          f"{escape(terminal_safe(f['message']))}", highlight=False)


def _iter_file(path: Path, progress: Progress, task: TaskID) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            progress.advance(task, len(chunk))
            yield chunk


def _collect(path: Path) -> dict[str, Path]:
    if not path.exists():
        raise CliError(f"{path} does not exist.")
    if path.is_file():
        return {path.name: path}
    files = {str(p.relative_to(path)).replace(os.sep, "/"): p for p in sorted(path.rglob("*"))
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)}
    if not files:
        raise CliError(f"{path} is an empty directory.")
    return files


@models.command("import")
@handle_errors
def import_model(ctx: typer.Context, path: Path,
                 name: Annotated[str, typer.Option(help="Catalog name.")],
                 version: str = "1",
                 format: Annotated[str | None, typer.Option(help="gguf | safetensors (default: from files)")] = None,
                 task: Annotated[str | None, typer.Option(help="chat-completion | embeddings")] = None,
                 license: Annotated[str, typer.Option(help="SPDX licence id.")] = "NOASSERTION",
                 license_url: str | None = None, publisher: str | None = None,
                 card: Annotated[Path | None, typer.Option(help="Markdown model card file.")] = None,
                 catalog: Annotated[bool, typer.Option("--catalog", help="Catalog-wide (platform admin).")] = False,
                 downloadable: bool = False, finetunable: bool = False, json: JsonOpt = False) -> None:
    """Stream a local GGUF file or safetensors model directory to the server and register it."""
    files = _collect(path)
    fmt = format or ("gguf" if any(k.endswith(".gguf") for k in files) else "safetensors")
    body = {"name": name, "version": version, "format": fmt, "task": task, "license": license,
            "license_url": license_url, "publisher": publisher, "downloadable": downloadable,
            "finetunable": finetunable, "scope": "catalog" if catalog else "workspace",
            "card": card.read_text(encoding="utf-8") if card else "",
            "files": [{"path": rel, "size": p.stat().st_size} for rel, p in files.items()]}
    c = client(ctx)
    upload = c.request("POST", "/api/v1/model-uploads", json=body)
    try:
        _send_files(c, upload["id"], files)
        model = c.request("POST", f"/api/v1/model-uploads/{upload['id']}/commit", timeout=None)
    except BaseException:
        try:
            c.request("DELETE", f"/api/v1/model-uploads/{upload['id']}")
        except CliError:
            pass  # already discarded by the server (a failed commit removes the upload)
        raise
    if json:
        return print_json(model)
    status = model["scan"]["status"]
    console.print(f"Imported [bold]{model['name']}[/bold] {model['version']} ({model['id']}), scan {status}.")
    _print_findings(model)


def _send_files(c: Client, upload_id: str, files: dict[str, Path]) -> None:
    with _progress() as progress, c.http() as http:
        for rel, p in files.items():
            task = progress.add_task(rel, total=p.stat().st_size)
            try:
                r = http.put(f"/api/v1/model-uploads/{upload_id}/files/{rel}",
                             content=_iter_file(p, progress, task),
                             headers={"Content-Type": "application/octet-stream",
                                      "Content-Length": str(p.stat().st_size)}, timeout=None)
            except httpx.ConnectError as exc:
                raise CliError(f"Cannot reach modelport at {c.url}.") from exc
            Client.check(r)


@models.command("download")
@handle_errors
def download_model(ctx: typer.Context, name: str,
                   output: Annotated[Path, typer.Option("-o", "--output", help="File (one-file models) or directory.")],
                   version: str | None = None, json: JsonOpt = False) -> None:
    """Download a downloadable model and verify every file's sha256."""
    c = client(ctx)
    m = c.request("GET", f"/api/v1/models/{name}", params={"version": version} if version else None)
    if not m["downloadable"]:
        raise CliError(f"Model '{name}' is not downloadable: its licence or owner does not allow it.", status=403)
    single = len(m["files"]) == 1
    if single and not output.is_dir():
        targets = {m["files"][0]["path"]: output}
    else:
        targets = {f["path"]: output / f["path"] for f in m["files"]}
    done = []
    with _progress() as progress, c.http() as http:
        for f in m["files"]:
            dest = targets[f["path"]]
            dest.parent.mkdir(parents=True, exist_ok=True)
            task = progress.add_task(f["path"], total=f["size"])
            _download_one(http, name, m["version"], f, dest, progress, task)
            done.append({"path": f["path"], "output": str(dest), "sha256": f["sha256"], "verified": True})
    if json:
        return print_json({"model": m["name"], "version": m["version"], "files": done})
    console.print(f"Downloaded {len(done)} file(s) of {m['name']} {m['version']}; sha256 verified.")


def _download_one(http: httpx.Client, name: str, version: str, f: dict, dest: Path, progress: Progress,
                  task: TaskID) -> None:
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    try:
        with http.stream("GET", f"/api/v1/models/{name}/download",
                         params={"version": version, "file": f["path"]}, timeout=None) as r:
            if r.status_code >= 400:
                r.read()
                raise error_from(r)
            with open(part, "wb") as out:
                try:
                    for chunk in r.iter_bytes(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        progress.advance(task, len(chunk))
                except httpx.TransportError as exc:
                    # The server verifies the file while it sends it and cuts the connection before
                    # the last chunk of a file whose stored bytes no longer match their sha256.
                    raise CliError(f"{f['path']}: the download was cut off before its end (the server stops a "
                                   "file whose stored bytes no longer match their recorded sha256, or the "
                                   "connection failed); the file was not saved.") from exc
        if digest.hexdigest() != f["sha256"]:
            raise CliError(f"{f['path']}: sha256 mismatch (got {digest.hexdigest()}, catalog says {f['sha256']}); "
                           "the file was not saved.")
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)


@models.command("update")
@handle_errors
def update_model(ctx: typer.Context, name: str, version: str | None = None,
                 curated: Annotated[bool | None, typer.Option("--curated/--not-curated")] = None,
                 downloadable: Annotated[bool | None, typer.Option("--downloadable/--not-downloadable")] = None,
                 json: JsonOpt = False) -> None:
    """Change a model's flags (platform admin for catalog-wide models, owners for private ones)."""
    body = {k: v for k, v in {"curated": curated, "downloadable": downloadable}.items() if v is not None}
    m = client(ctx).request("PATCH", f"/api/v1/models/{name}", params={"version": version} if version else None,
                            json=body)
    if json:
        return print_json(m)
    console.print(f"Updated {m['name']} {m['version']}: curated={m['curated']}, downloadable={m['downloadable']}.")


@models.command("deprecate")
@handle_errors
def deprecate_model(ctx: typer.Context, name: str, version: str | None = None, json: JsonOpt = False) -> None:
    """Deprecate a model: it stays listed, and new deployments of it are refused."""
    m = client(ctx).request("POST", f"/api/v1/models/{name}/deprecate",
                            params={"version": version} if version else None)
    if json:
        return print_json(m)
    console.print(f"Deprecated {m['name']} {m['version']}.")


@models.command("scan")
@handle_errors
def scan_model(ctx: typer.Context, name: str, version: str | None = None, json: JsonOpt = False) -> None:
    """Scan a model's files again and check their recorded sha256."""
    m = client(ctx).request("POST", f"/api/v1/models/{name}/scan", params={"version": version} if version else None,
                            timeout=None)
    if json:
        return print_json(m)
    console.print(f"{m['name']} {m['version']}: scan {m['scan']['status']}.")
    _print_findings(m)


@models.command("delete")
@handle_errors
def delete_model(ctx: typer.Context, name: str, version: str | None = None,
                 yes: Annotated[bool, typer.Option("--yes", help="Confirm without asking.")] = False,
                 json: JsonOpt = False) -> None:
    """Delete a model and its files (asks first; bundled models cannot be deleted)."""
    if not yes:
        typer.confirm(f"Delete model '{name}'{f' version {version}' if version else ''}?", abort=True)
    client(ctx).request("DELETE", f"/api/v1/models/{name}", params={"version": version} if version else None)
    if json:
        return print_json({"deleted": name, "version": version})
    console.print(f"Deleted {name}.")


