"""The `modelport` command: a client of the REST API, plus `serve` to run the server."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from modelport import __version__
from modelport.cli import datasets as datasets_cli
from modelport.cli import deployments as deployments_cli
from modelport.cli import finetuning as finetuning_cli
from modelport.cli import identity as identity_cli
from modelport.cli import marketplace as marketplace_cli
from modelport.cli import models as models_cli
from modelport.cli import policies as policies_cli
from modelport.cli import safety as safety_cli
from modelport.cli.common import JsonOpt, client, handle_errors
from modelport.cli.output import console, err_console, kv, print_json
from modelport.errors import ModelportError

app = typer.Typer(name="modelport", help="Self-hosted model catalog and Models-as-a-Service.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
app.add_typer(identity_cli.workspaces, name="workspaces")
app.add_typer(identity_cli.users, name="users")
app.add_typer(identity_cli.apikeys, name="apikeys")
app.add_typer(models_cli.models, name="models")
app.add_typer(deployments_cli.deployments, name="deployments")
app.add_typer(datasets_cli.datasets, name="datasets")
app.add_typer(safety_cli.safety, name="safety")
app.add_typer(datasets_cli.workspace_key, name="workspace-key")
app.add_typer(datasets_cli.cmk, name="cmk")
app.add_typer(datasets_cli.platform_key, name="platform-key")
app.add_typer(finetuning_cli.finetune, name="finetune")
app.add_typer(marketplace_cli.publishers, name="publishers")
app.add_typer(marketplace_cli.offers, name="offers")
app.add_typer(marketplace_cli.marketplace, name="marketplace")
app.add_typer(marketplace_cli.publisher, name="publisher")
app.add_typer(marketplace_cli.budget, name="budget")
app.command("usage")(marketplace_cli.usage)
app.add_typer(policies_cli.policies, name="policies")
app.command("audit")(identity_cli.audit)


@app.callback()
def root(ctx: typer.Context,
         url: Annotated[str | None, typer.Option(help="Server URL (env MODELPORT_URL).")] = None,
         api_key: Annotated[str | None, typer.Option(help="API key (env MODELPORT_API_KEY; default "
                                                          "$MODELPORT_HOME/admin.key).")] = None,
         workspace: Annotated[str | None, typer.Option(help="Platform admins: act in this workspace.")] = None,
         ) -> None:
    ctx.obj = {"url": url, "api_key": api_key, "workspace": workspace}


@app.command()
def version() -> None:
    """Print the version."""
    console.print(__version__)


@app.command()
def serve(host: Annotated[str | None, typer.Option(help="Bind address (env MODELPORT_HOST).")] = None,
          port: Annotated[int | None, typer.Option(help="Port (env MODELPORT_PORT).")] = None) -> None:
    """Run the server in the foreground on the embedded defaults (Ctrl-C stops it)."""
    import os

    from pydantic import ValidationError

    from modelport import logs
    from modelport.api import server
    from modelport.api.app import create_app
    from modelport.bootstrap import build_services, prepare
    from modelport.config import build_settings
    from modelport.workers.isolation import harden_process
    from modelport.workers.sandbox import secure_run_dir

    # Before anything is written: files for this user only (database, its WAL, blobs, keys, logs),
    # no core dumps, and no ptrace or /proc/<pid>/environ|mem by other processes of the same uid.
    os.umask(0o077)
    harden_process()
    overrides: dict[str, object] = {}
    if host:
        overrides["host"] = host
    if port:
        overrides["port"] = port
    try:
        settings = build_settings(None, **overrides)
    except ValidationError as exc:  # the messages only: the input may hold master keys
        err_console.print("[red]Invalid configuration:[/red] " + "; ".join(e["msg"] for e in exc.errors()))
        raise typer.Exit(2) from None
    except ValueError as exc:
        err_console.print(f"[red]Invalid configuration:[/red] {exc}")
        raise typer.Exit(2) from None
    logs.configure(settings.log_level, settings.log_file)
    try:
        services = build_services(settings)
        # before any worker starts: refuse a run directory that someone else prepared
        secure_run_dir(settings.run_dir)
    except ModelportError as exc:  # e.g. a home whose directories need an operator's decision
        err_console.print(f"[red]Cannot start:[/red] {exc.message}", highlight=False)
        raise typer.Exit(2) from None
    err_console.print(f"modelport {__version__}: preparing {settings.home} (migrations, bundled models)...")
    result = prepare(services)
    early = server.EarlySignals()  # from here on, a Ctrl-C stops the server once it is up
    early.install()
    _announce(settings, result)
    _announce_signin_link(settings, services)
    # SIGTERM/SIGINT drain in-flight requests (settings.drain_seconds), then exit 0.
    server.run(create_app(settings, services), host=settings.host, port=settings.port,
               drain_seconds=settings.drain_seconds, early=early)


def _announce(settings, result) -> None:
    if result.admin_key:
        err_console.print(f"Created the platform admin, the 'default' workspace and an admin key, saved to "
                          f"{settings.admin_key_file} (mode 0600).", soft_wrap=True)
        if sys.stdout.isatty():
            # Shown once on a terminal; never when output goes to a file or a log collector.
            console.print(f"Admin key (shown once): [bold]{result.admin_key}[/bold]", highlight=False)
    if result.deployment_key:
        err_console.print(f"Created the serverless deployment 'chat' of SmolLM2-135M-Instruct; its key is saved to "
                          f"{settings.home / 'chat.key'} (mode 0600).", soft_wrap=True)
        if sys.stdout.isatty():
            console.print(f"Deployment key of 'chat' (shown once): [bold]{result.deployment_key}[/bold]",
                          highlight=False)
    for p in result.problems:
        err_console.print(f"[yellow]Bundled model skipped:[/yellow] {p}")
    err_console.print(
        f"\nmodelport is starting on {settings.base_url}\n"
        f"Next steps, in another terminal (the CLI reads {settings.admin_key_file}):\n"
        f"  .venv/bin/modelport status\n"
        f"  .venv/bin/modelport models list\n"
        f"  .venv/bin/modelport deployments list\n"
        f"  curl {settings.base_url}/v1/chat/completions \\\n"
        f"    -H \"Authorization: Bearer $(cat {settings.home / 'chat.key'})\" "
        f"-H 'Content-Type: application/json' -d '{{\"model\": \"chat\", \"messages\": [{{\"role\": \"user\", "
        f"\"content\": \"Hello!\"}}]}}'\n"
        f"  open {settings.base_url}/ for the web portal ({settings.base_url}/docs for the REST API)\n",
        highlight=False,
        soft_wrap=True,
    )


def _announce_signin_link(settings, services) -> None:
    """The portal's one-time sign-in link for the local admin, on a terminal only (never logged,
    never written where output is collected)."""
    if not sys.stdout.isatty():
        return
    from modelport.portal.links import signin_link

    link = signin_link(settings, services.db)
    if link:
        console.print(f"Web portal: {settings.base_url}/  one-time sign-in link (valid "
                      f"{settings.portal_signin_link_minutes} min): {link}", highlight=False, soft_wrap=True)


@app.command("signin-link")
def signin_link_command() -> None:
    """Print a one-time, expiring link that signs the local admin into the web portal (reads this
    machine's admin key file and database directly; the server need not run). Never logged."""
    from modelport.config import build_settings
    from modelport.db import migrate
    from modelport.db.engine import Database
    from modelport.portal.links import signin_link

    settings = build_settings()
    if not settings.admin_key_file.exists():
        err_console.print(f"[red]No admin key file at {settings.admin_key_file}[/red]: run `modelport serve` once "
                          "on this machine first, or sign in with an API key.")
        raise typer.Exit(1)
    db = Database(settings.db_url)
    try:
        if not migrate.is_current(db.engine):
            err_console.print("[red]The database needs its migrations[/red]: start `modelport serve` once.")
            raise typer.Exit(1)
        link = signin_link(settings, db)
    finally:
        db.dispose()
    if link is None:
        err_console.print("[red]The admin key file holds no valid key[/red] (revoked?); sign in with an API key.")
        raise typer.Exit(1)
    console.print(link, highlight=False, soft_wrap=True)


@app.command()
@handle_errors
def status(ctx: typer.Context, json: JsonOpt = False) -> None:
    """Report whether the server is alive and ready, and who you are."""
    c = client(ctx)
    alive = c.request("GET", "/healthz")
    import httpx

    with c.http() as http:
        r = http.get("/readyz")
    ready = r.json()
    me = None
    if c.key:
        try:
            me = c.request("GET", "/api/v1/me")
        except Exception:  # status still reports health without a valid key
            me = None
    out = {"url": c.url, "alive": alive["status"] == "ok", "version": alive["version"],
           "ready": ready["status"] == "ready", "checks": ready["checks"], "me": me}
    del httpx
    if json:
        print_json(out)
    else:
        kv(out, [("Server", "url"), ("Version", "version"), ("Alive", "alive"), ("Ready", "ready"),
                 ("Database", lambda d: d["checks"].get("database")),
                 ("Migrations", lambda d: d["checks"].get("migrations")),
                 ("You", lambda d: f"{d['me']['user']} in {d['me']['workspace']} ({d['me']['role'] or 'no role'})"
                  if d["me"] else "not signed in")])
    if r.status_code != 200:
        raise typer.Exit(1)
