"""CLI: deployments (create waits until the endpoint answered or failed)."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from modelport.cli.client import CliError
from modelport.cli.common import JsonOpt, client, handle_errors
from modelport.cli.output import Columns, console, err_console, kv, print_json, table

deployments = typer.Typer(help="Deployments: named endpoints serving a catalog model.", no_args_is_help=True)



def isolation_text(isolation: dict | None) -> str:
    """`network, files, processes` when all are isolated; what is not, in capitals, otherwise."""
    if not isolation:
        return "-"
    parts = ("network", "files", "processes")
    off = [p for p in parts if not isolation[p]]
    on = ", ".join(p for p in parts if isolation[p])
    return on if not off else (on + "; " if on else "") + "NOT ISOLATED: " + ", ".join(off)


def pool_text(pool: dict | None) -> str:
    """`2 of 1-4 (2 ready)`: workers now, the range the pool may take, how many take requests."""
    if not pool:
        return "no workers running (the next call starts them)"
    return (f"{pool['instances']} of {pool['min_instances']}-{pool['max_instances']} "
            f"({pool['ready']} ready)")


ROWS: Columns = [("NAME", "name"), ("MODEL", "model"), ("TYPE", "type"), ("INSTANCES", "instances"),
        ("POOL", lambda d: (f"{d['pool']['instances']}/{d['pool']['max_instances']}" if d.get("pool") else "0")),
        ("GEOGRAPHY", "geography"), ("STATE", "state"), ("ISOLATION", lambda d: isolation_text(d.get("isolation"))),
        ("PUBLIC", lambda d: d["network"]["public_access"])]


def _show(d: dict) -> None:
    kv(d, [("Name", "name"), ("ID", "id"), ("Model", lambda x: f"{x['model']} {x['model_version']}"),
           ("Task", "task"), ("Type", "type"), ("Instances", "instances"),
           ("Pool", lambda x: pool_text(x.get("pool"))), ("Geography", "geography"),
           ("State", "state"), ("Reason", "state_reason"),
           ("Isolation", lambda x: isolation_text(x.get("isolation"))),
           ("Public access", lambda x: x["network"]["public_access"]),
           ("Allowed ranges", lambda x: x["network"]["allowed_ranges"] or None),
           ("Requests/minute", lambda x: _limit(x, "requests_per_minute")),
           ("Tokens/minute", lambda x: _limit(x, "tokens_per_minute")),
           ("OpenAI base URL", lambda x: x["endpoints"]["openai"]),
           ("Azure endpoint", lambda x: x["endpoints"]["azure"])])


def _limit(d: dict, field: str) -> str:
    return f"{d['rate_limits'][field]:,} (cap {d['rate_limit_caps'][field]:,})"


def _wait(ctx: typer.Context, name: str, timeout: float) -> dict:
    c = client(ctx)
    deadline = time.monotonic() + timeout
    with err_console.status(f"Starting {name} (loading the model)..."):
        while True:
            d = c.request("GET", f"/api/v1/deployments/{name}")
            if d["state"] in ("succeeded", "failed") or time.monotonic() > deadline:
                return d
            time.sleep(0.5)


@deployments.command("create")
@handle_errors
def create(ctx: typer.Context, name: str,
           model: Annotated[str, typer.Option(help="Catalog model name.")],
           type: Annotated[str, typer.Option("--type", help="dedicated | serverless")] = "serverless",
           instances: Annotated[int, typer.Option(help="Dedicated: worker instances.")] = 1,
           geography: Annotated[str | None, typer.Option(help="Where requests are processed.")] = None,
           model_version: str | None = None,
           private: Annotated[bool, typer.Option("--private", help="Public access off.")] = False,
           allow: Annotated[list[str] | None, typer.Option(help="Allowed client range (CIDR); repeat.")] = None,
           wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until it answers.")] = True,
           timeout: float = 300, json: JsonOpt = False) -> None:
    """Create a deployment; its two keys are shown once."""
    body = {"name": name, "model": model, "type": type, "instances": instances, "geography": geography,
            "model_version": model_version,
            "network": {"public_access": not private, "allowed_ranges": allow or []}}
    created = client(ctx).request("POST", "/api/v1/deployments", json={k: v for k, v in body.items() if v is not None})
    keys = created["keys"]
    final = _wait(ctx, name, timeout) if wait else created
    if json:
        return print_json({**final, "keys": keys})
    _show(final)
    err_console.print("Deployment keys (shown once; store them now):")
    console.print(f"primary   {keys['primary']}\nsecondary {keys['secondary']}", highlight=False)
    if final["state"] == "failed":
        raise CliError(f"Deployment {name} failed: {final['state_reason']}")


@deployments.command("list")
@handle_errors
def list_(ctx: typer.Context, json: JsonOpt = False) -> None:
    """List the deployments of the current workspace."""
    rows = client(ctx).request("GET", "/api/v1/deployments")
    if json:
        return print_json(rows)
    table(rows, ROWS)


@deployments.command("show")
@handle_errors
def show(ctx: typer.Context, name: str, json: JsonOpt = False) -> None:
    """Show a deployment: model, type, state, network settings and its endpoints (never its keys)."""
    d = client(ctx).request("GET", f"/api/v1/deployments/{name}")
    if json:
        return print_json(d)
    _show(d)


@deployments.command("update")
@handle_errors
def update(ctx: typer.Context, name: str, instances: int | None = None,
           public: Annotated[bool | None, typer.Option("--public/--private")] = None,
           allow: Annotated[list[str] | None, typer.Option(help="Allowed client range (CIDR); repeat.")] = None,
           rpm: Annotated[int | None, typer.Option("--rpm", help="Owners: requests per minute, at most the cap.")]
           = None,
           tpm: Annotated[int | None, typer.Option("--tpm", help="Owners: tokens per minute, at most the cap.")]
           = None,
           rpm_cap: Annotated[int | None, typer.Option("--rpm-cap", help="Platform admins: the requests-per-minute "
                                                       "cap.")] = None,
           tpm_cap: Annotated[int | None, typer.Option("--tpm-cap", help="Platform admins: the tokens-per-minute "
                                                       "cap.")] = None,
           json: JsonOpt = False) -> None:
    """Change instances (dedicated), network settings, or rate limits (owners lower them within the caps
    that platform admins set)."""
    c = client(ctx)
    body: dict = {}
    if instances is not None:
        body["instances"] = instances
    if rpm is not None or tpm is not None:
        body["rate_limits"] = {k: v for k, v in (("requests_per_minute", rpm), ("tokens_per_minute", tpm))
                               if v is not None}
    if rpm_cap is not None or tpm_cap is not None:
        body["rate_limit_caps"] = {k: v for k, v in (("requests_per_minute", rpm_cap), ("tokens_per_minute", tpm_cap))
                                   if v is not None}
    if public is not None or allow is not None:
        current = c.request("GET", f"/api/v1/deployments/{name}")["network"]
        body["network"] = {"public_access": current["public_access"] if public is None else public,
                           "allowed_ranges": current["allowed_ranges"] if allow is None else allow}
    d = c.request("PATCH", f"/api/v1/deployments/{name}", json=body)
    if json:
        return print_json(d)
    _show(d)


@deployments.command("delete")
@handle_errors
def delete(ctx: typer.Context, name: str,
           yes: Annotated[bool, typer.Option("--yes", help="Confirm without asking.")] = False,
           json: JsonOpt = False) -> None:
    """Delete a deployment (asks first): its keys stop working and its workers stop."""
    if not yes:
        typer.confirm(f"Delete deployment '{name}'? Its keys stop working at once.", abort=True)
    client(ctx).request("DELETE", f"/api/v1/deployments/{name}")
    if json:
        return print_json({"deleted": name})
    console.print(f"Deleted deployment {name}.")


@deployments.command("regenerate-key")
@handle_errors
def regenerate_key(ctx: typer.Context, name: str,
                   which: Annotated[str, typer.Option(help="primary | secondary")] = "primary",
                   json: JsonOpt = False) -> None:
    """Replace one of the two keys (the other keeps working: rotate without downtime)."""
    if which not in ("primary", "secondary"):
        raise typer.BadParameter("which must be primary or secondary", param_hint="--which")
    keys = client(ctx).request("POST", f"/api/v1/deployments/{name}/keys", json={"which": which})
    if json:
        return print_json(keys)
    err_console.print(f"New {which} key (shown once):")
    console.print(keys[which], highlight=False)


@deployments.command("usage")
@handle_errors
def usage(ctx: typer.Context, name: str, json: JsonOpt = False) -> None:
    """Requests and token counts recorded for billing (counts only)."""
    u = client(ctx).request("GET", f"/api/v1/deployments/{name}/usage")
    if json:
        return print_json(u)
    kv(u, [("Deployment", "deployment"), ("Requests", "requests"), ("Prompt tokens", "prompt_tokens"),
           ("Completion tokens", "completion_tokens")])


POOL_ROWS: Columns = [("POOL", "key"), ("KIND", "kind"), ("GEOGRAPHY", "geography"), ("DEPLOYMENTS", "deployments"),
             ("INSTANCES", lambda p: f"{p['instances']} of {p['min_instances']}-{p['max_instances']}"),
             ("READY", "ready"), ("RETIRING", "retiring"), ("SLOTS", "slots"), ("IN FLIGHT", "in_flight"),
             ("WAITING", "waiting"), ("WORKSPACES", "workspaces")]


@deployments.command("pools")
@handle_errors
def pools(ctx: typer.Context, json: JsonOpt = False) -> None:
    """Platform admins: every running worker pool, its size and its load (counts only)."""
    rows = client(ctx).request("GET", "/api/v1/pools")
    if json:
        return print_json(rows)
    table(rows, POOL_ROWS)
