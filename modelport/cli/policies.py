"""CLI: governance policies (Cedar), their test, and compliance of existing resources."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelport.cli.client import CliError
from modelport.cli.common import JsonOpt, client, handle_errors
from modelport.cli.output import console, kv, print_json, table, terminal_safe

policies = typer.Typer(help="Governance policies in Cedar: what may be deployed, imported, downloaded, fine-tuned.",
                       no_args_is_help=True)

ScopeOpt = Annotated[str, typer.Option("--scope", help="workspace (owners) or platform (platform admins).")]
ACTIONS = ["deploy", "update_deployment", "change_content_filter", "import_model", "download_model",
           "create_finetune", "subscribe"]


@policies.command("list")
@handle_errors
def list_(ctx: typer.Context, json: JsonOpt = False) -> None:
    """List the policies in force in this workspace: the platform's and the workspace's own."""
    rows = client(ctx).request("GET", "/api/v1/policies")
    if json:
        return print_json(rows)
    table(rows, [("ID", "id"), ("SCOPE", "scope"), ("EFFECT", "effect"), ("ACTIONS", "actions"),
                 ("UPDATED", "updated_at")])


@policies.command("show")
@handle_errors
def show(ctx: typer.Context, policy_id: str, json: JsonOpt = False) -> None:
    """Show one policy and its Cedar text."""
    p = client(ctx).request("GET", f"/api/v1/policies/{policy_id}")
    if json:
        return print_json(p)
    kv(p, [("Id", "id"), ("Scope", "scope"), ("Workspace", "workspace"), ("Effect", "effect"),
           ("Actions", "actions"), ("Updated", "updated_at")])
    console.print(terminal_safe(p["cedar"]), highlight=False, markup=False)


@policies.command("put")
@handle_errors
def put(ctx: typer.Context, policy_id: str,
        file: Annotated[Path, typer.Option("--file", help="The Cedar policy (one forbid), e.g. policies/*.cedar.",
                                           exists=True, dir_okay=False, readable=True)],
        scope: ScopeOpt = "workspace", json: JsonOpt = False) -> None:
    """Save a policy under ID (create or replace); it is in force for the next request."""
    if scope not in ("workspace", "platform"):
        raise CliError("--scope is workspace or platform.")
    p = client(ctx).request("PUT", f"/api/v1/policies/{policy_id}",
                            json={"cedar": file.read_text(encoding="utf-8"), "scope": scope})
    if json:
        return print_json(p)
    console.print(f"Saved {p['scope']} policy [bold]{p['id']}[/bold] ({p['effect']}); in force now.", highlight=False)


@policies.command("delete")
@handle_errors
def delete(ctx: typer.Context, policy_id: str, scope: ScopeOpt = "workspace",
           yes: Annotated[bool, typer.Option("--yes", help="Confirm without asking.")] = False) -> None:
    """Delete a policy; what it forbade is allowed from the next request."""
    if not yes:
        typer.confirm(f"Delete {scope} policy '{policy_id}'? What it forbids is allowed at once.", abort=True)
    client(ctx).request("DELETE", f"/api/v1/policies/{policy_id}", params={"scope": scope})
    console.print(f"Deleted {scope} policy {policy_id}.", highlight=False)


@policies.command("schema")
@handle_errors
def schema(ctx: typer.Context) -> None:
    """Print the Cedar schema policies are written against (entities, attributes, actions)."""
    c = client(ctx)
    with c.http() as http:
        r = http.get("/api/v1/policies/schema")
    if r.status_code >= 400:
        c.check(r)
    console.print(terminal_safe(r.text), highlight=False, markup=False)


@policies.command("test")
@handle_errors
def test(ctx: typer.Context,
         action: Annotated[str, typer.Option("--action", help=" | ".join(ACTIONS))],
         model: Annotated[str | None, typer.Option("--model", help="Catalog model name.")] = None,
         version: Annotated[str | None, typer.Option("--version", help="Model version (default: latest).")] = None,
         as_user: Annotated[str | None, typer.Option("--as", help="Decide for this member (owners, admins).")] = None,
         deployment: Annotated[str | None, typer.Option("--deployment", help="Start from this deployment.")] = None,
         type_: Annotated[str | None, typer.Option("--type", help="dedicated | serverless")] = None,
         geography: Annotated[str | None, typer.Option("--geography")] = None,
         instances: Annotated[int | None, typer.Option("--instances")] = None,
         public: Annotated[bool | None, typer.Option("--public/--no-public", help="Public network access.")] = None,
         allow_range: Annotated[list[str] | None, typer.Option("--allow-range", help="CIDR; repeat.")] = None,
         content_filter: Annotated[bool | None, typer.Option("--filter/--no-filter",
                                                             help="Content filter on or off.")] = None,
         threshold: Annotated[str | None, typer.Option(help="low | medium | high, every category.")] = None,
         json: JsonOpt = False) -> None:
    """Answer allow or deny for a described request, with the policy ids, without doing it."""
    if action not in ACTIONS:
        raise CliError(f"--action is one of: {', '.join(ACTIONS)}.")
    body: dict = {"action": action, "model": model, "model_version": version, "as_user": as_user,
                  "deployment": deployment, "type": type_, "geography": geography, "instances": instances}
    if public is not None or allow_range:
        body["network"] = {"public_access": True if public is None else public, "allowed_ranges": allow_range or []}
    if content_filter is not None or threshold is not None:
        cats = {"prompt_threshold": threshold, "completion_threshold": threshold} if threshold else {}
        body["content_filter"] = {"enabled": True if content_filter is None else content_filter,
                                  **{c: cats for c in ("hate", "sexual", "violence", "self_harm") if cats}}
    r = client(ctx).request("POST", "/api/v1/policies/test", json={k: v for k, v in body.items() if v is not None})
    if json:
        print_json(r)
    else:
        word = "[green]allow[/green]" if r["decision"] == "allow" else "[red]deny[/red]"
        console.print(f"{word}", highlight=False)
        if r["denied_by"]:
            console.print("denied by: " + ", ".join(r["denied_by"]), highlight=False, markup=False)
        if r["audited_by"]:
            console.print("audited by: " + ", ".join(r["audited_by"]), highlight=False, markup=False)
    if r["decision"] == "deny":
        raise typer.Exit(3)


@policies.command("compliance")
@handle_errors
def compliance(ctx: typer.Context,
               all_workspaces: Annotated[bool, typer.Option("--all", help="Platform admins: every workspace.")] = False,
               enforce: Annotated[bool, typer.Option("--enforce", help="Suspend the deployments policies deny "
                                                     "(503 with the reason) and resume those that comply again.")]
               = False,
               json: JsonOpt = False) -> None:
    """List deployments and models that the policies in force would deny or audit now. Without
    --enforce nothing existing changes."""
    params = {"all_workspaces": "true"} if all_workspaces else {}
    if enforce:
        r = client(ctx).request("POST", "/api/v1/policies/compliance/enforce", params=params)
    else:
        r = client(ctx).request("GET", "/api/v1/policies/compliance", params=params)
    if json:
        return print_json(r)
    table(r["items"], [("KIND", "kind"), ("NAME", "name"), ("WORKSPACE", "workspace"), ("STATE", "state"),
                       ("DENIED BY", "denied_by"), ("AUDITED BY", "audited_by"), ("ID", "id")])
    if enforce:
        suspended, resumed = ", ".join(r["suspended"]) or "none", ", ".join(r["resumed"]) or "none"
        console.print(f"Suspended: {suspended}; resumed: {resumed}.", highlight=False, markup=False)
