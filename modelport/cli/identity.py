"""CLI: workspaces, users, members, API keys, audit."""

from __future__ import annotations

from typing import Annotated

import typer

from modelport.cli.common import JsonOpt, client, handle_errors
from modelport.cli.output import console, err_console, kv, print_json, table

workspaces = typer.Typer(help="Workspaces (tenants) and their members.", no_args_is_help=True)
users = typer.Typer(help="Users of the installation (platform admin).", no_args_is_help=True)
apikeys = typer.Typer(help="API keys of the current workspace (each made by its own user).", no_args_is_help=True)

ROLES = ["owner", "contributor", "reader"]


@workspaces.command("list")
@handle_errors
def ws_list(ctx: typer.Context, json: JsonOpt = False) -> None:
    """List the workspaces you belong to (platform admins: all)."""
    rows = client(ctx).request("GET", "/api/v1/workspaces")
    if json:
        return print_json(rows)
    table(rows, [("NAME", "name"), ("ID", "id"), ("YOUR ROLE", "role"), ("CREATED", "created_at")])


@workspaces.command("create")
@handle_errors
def ws_create(ctx: typer.Context, name: str, description: str = "",
              owner: Annotated[str | None, typer.Option(help="User who owns it (default: you).")] = None,
              json: JsonOpt = False) -> None:
    """Create a workspace (platform admin)."""
    ws = client(ctx).request("POST", "/api/v1/workspaces",
                             json={"name": name, "description": description, "owner": owner})
    if json:
        return print_json(ws)
    console.print(f"Created workspace [bold]{ws['name']}[/bold] ({ws['id']}).")


@workspaces.command("show")
@handle_errors
def ws_show(ctx: typer.Context, name: str, json: JsonOpt = False) -> None:
    """Show a workspace: name, id, description, creation time."""
    ws = client(ctx).request("GET", f"/api/v1/workspaces/{name}")
    if json:
        return print_json(ws)
    kv(ws, [("Name", "name"), ("ID", "id"), ("Description", "description"), ("Created", "created_at")])


@workspaces.command("delete")
@handle_errors
def ws_delete(ctx: typer.Context, name: str,
              yes: Annotated[bool, typer.Option("--yes", help="Confirm without asking.")] = False,
              json: JsonOpt = False) -> None:
    """Delete a workspace and everything in it."""
    if not yes:
        typer.confirm(f"Delete workspace '{name}' and everything in it?", abort=True)
    client(ctx).request("DELETE", f"/api/v1/workspaces/{name}")
    if json:
        return print_json({"deleted": name})
    console.print(f"Deleted workspace {name}.")


@workspaces.command("members")
@handle_errors
def ws_members(ctx: typer.Context, json: JsonOpt = False) -> None:
    """List the members of the current workspace."""
    rows = client(ctx).request("GET", "/api/v1/members")
    if json:
        return print_json(rows)
    table(rows, [("USER", "user"), ("ROLE", "role"), ("USER ID", "user_id"), ("SINCE", "created_at")])


@workspaces.command("add-member")
@handle_errors
def ws_add_member(ctx: typer.Context, user: str,
                  role: Annotated[str, typer.Option(help="owner | contributor | reader")] = "reader",
                  to: Annotated[str | None, typer.Option("--to", help="Platform admins: another workspace.")] = None,
                  json: JsonOpt = False) -> None:
    """Add a user to the current workspace (or, as platform admin, to --to WORKSPACE)."""
    if role not in ROLES:
        raise typer.BadParameter(f"role must be one of {', '.join(ROLES)}", param_hint="--role")
    path = f"/api/v1/workspaces/{to}/members" if to else "/api/v1/members"
    m = client(ctx).request("POST", path, json={"user": user, "role": role})
    if json:
        return print_json(m)
    console.print(f"Added {m['user']} as {m['role']}.")


@workspaces.command("set-role")
@handle_errors
def ws_set_role(ctx: typer.Context, user: str, role: str, json: JsonOpt = False) -> None:
    """Change a member's role in the current workspace (owners): owner | contributor | reader."""
    if role not in ROLES:
        raise typer.BadParameter(f"role must be one of {', '.join(ROLES)}", param_hint="ROLE")
    m = client(ctx).request("PATCH", f"/api/v1/members/{user}", json={"role": role})
    if json:
        return print_json(m)
    console.print(f"{m['user']} is now {m['role']}.")


@workspaces.command("remove-member")
@handle_errors
def ws_remove_member(ctx: typer.Context, user: str, json: JsonOpt = False) -> None:
    """Remove a member from the current workspace (owners); their keys in it are revoked."""
    client(ctx).request("DELETE", f"/api/v1/members/{user}")
    if json:
        return print_json({"removed": user})
    console.print(f"Removed {user}; their keys in this workspace were revoked.")


@users.command("list")
@handle_errors
def users_list(ctx: typer.Context, json: JsonOpt = False) -> None:
    """List the users of the installation (platform admin)."""
    rows = client(ctx).request("GET", "/api/v1/users")
    if json:
        return print_json(rows)
    table(rows, [("NAME", "name"), ("ID", "id"), ("EMAIL", "email"), ("ADMIN", "platform_admin"),
                 ("DISABLED", "disabled")])


@users.command("create")
@handle_errors
def users_create(ctx: typer.Context, name: str, email: str | None = None,
                 platform_admin: Annotated[bool, typer.Option("--platform-admin")] = False,
                 json: JsonOpt = False) -> None:
    """Create a user (platform admin); add them to a workspace with `workspaces add-member`."""
    u = client(ctx).request("POST", "/api/v1/users",
                            json={"name": name, "email": email, "platform_admin": platform_admin})
    if json:
        return print_json(u)
    console.print(f"Created user [bold]{u['name']}[/bold] ({u['id']}).")


@users.command("disable")
@handle_errors
def users_disable(ctx: typer.Context, name: str, json: JsonOpt = False) -> None:
    """Disable a user (platform admin): every key of theirs stops working at once."""
    u = client(ctx).request("PATCH", f"/api/v1/users/{name}", json={"disabled": True})
    if json:
        return print_json(u)
    console.print(f"Disabled {u['name']}; their keys stop working.")


@users.command("enable")
@handle_errors
def users_enable(ctx: typer.Context, name: str, json: JsonOpt = False) -> None:
    """Enable a disabled user again (platform admin); keys not revoked work again."""
    u = client(ctx).request("PATCH", f"/api/v1/users/{name}", json={"disabled": False})
    if json:
        return print_json(u)
    console.print(f"Enabled {u['name']}.")


@apikeys.command("create")
@handle_errors
def keys_create(ctx: typer.Context, name: str = "",
                expires_in_days: Annotated[int | None, typer.Option(help="Expire after this many days.")] = None,
                user: Annotated[str | None, typer.Option(help="Platform admins: create it for this member "
                                                              "(not a platform admin) of --workspace.")] = None,
                workspace: Annotated[str | None, typer.Option(help="With --user: the workspace the key is "
                                                                   "for.")] = None,
                publisher: Annotated[str | None, typer.Option(help="Platform admins, with --user: a publisher "
                                                                   "key for that publisher's user (no workspace "
                                                                   "powers).")] = None,
                json: JsonOpt = False) -> None:
    """Create an API key for yourself, or (platform admins, --user) for a member or a publisher's user.
    The key is shown once."""
    if publisher is not None:
        if user is None or workspace is not None:
            raise typer.BadParameter("--publisher needs --user (a user of the publisher) and no --workspace",
                                     param_hint="--publisher")
        from modelport.cli.marketplace import create_publisher_key

        return create_publisher_key(ctx, publisher, user, name, json)
    body = {"name": name, "expires_in_days": expires_in_days}
    if user is None:
        if workspace is not None:
            raise typer.BadParameter("--workspace needs --user; your own key is for your current workspace",
                                     param_hint="--workspace")
        k = client(ctx).request("POST", "/api/v1/apikeys", json=body)
    else:
        if not workspace:
            raise typer.BadParameter("--user needs --workspace WORKSPACE, the workspace the key is for",
                                     param_hint="--workspace")
        k = client(ctx).request("POST", f"/api/v1/users/{user}/apikeys", json={**body, "workspace": workspace})
    if json:
        return print_json(k)
    err_console.print(f"Created API key {k['id']}. Store it now; it is not shown again:")
    console.print(k["key"], highlight=False, soft_wrap=True)


@apikeys.command("list")
@handle_errors
def keys_list(ctx: typer.Context,
              publisher: Annotated[str | None, typer.Option(help="Platform admins: that publisher's keys "
                                                                 "instead.")] = None,
              json: JsonOpt = False) -> None:
    """List the API keys of the current workspace (yours; owners: everyone's), or (platform admins,
    --publisher) a publisher's. Secrets are never shown."""
    if publisher is not None:
        from modelport.cli.marketplace import list_publisher_keys

        return list_publisher_keys(ctx, publisher, json)
    rows = client(ctx).request("GET", "/api/v1/apikeys")
    if json:
        return print_json(rows)
    table(rows, [("ID", "id"), ("NAME", "name"), ("USER", "user_id"), ("CREATED", "created_at"),
                 ("CREATED BY", "created_by"), ("PLATFORM", "platform_admin"),
                 ("EXPIRES", "expires_at"), ("LAST USED", "last_used_at"), ("REVOKED", "revoked_at")])


@apikeys.command("revoke")
@handle_errors
def keys_revoke(ctx: typer.Context, key_id: str,
                publisher: Annotated[str | None, typer.Option(help="Platform admins: KEY_ID is a key of this "
                                                                   "publisher (`pkey_...`).")] = None,
                json: JsonOpt = False) -> None:
    """Revoke an API key by its id (`key_...`, or a publisher's `pkey_...` with --publisher); it stops
    working at once."""
    if publisher is not None:
        from modelport.cli.marketplace import revoke_publisher_key

        return revoke_publisher_key(ctx, publisher, key_id, json)
    if key_id.startswith("pkey_"):
        raise typer.BadParameter("a publisher API key: name its publisher with --publisher P",
                                 param_hint="--publisher")
    k = client(ctx).request("DELETE", f"/api/v1/apikeys/{key_id}")
    if json:
        return print_json(k)
    console.print(f"Revoked {k['id']}.")


@handle_errors
def audit(ctx: typer.Context,
          all_workspaces: Annotated[bool, typer.Option("--all", help="Platform admins: every workspace.")] = False,
          action: str | None = None, limit: int = 50, json: JsonOpt = False) -> None:
    """Show the audit log of the current workspace (owners) or of all (platform admins)."""
    rows = client(ctx).request("GET", "/api/v1/audit",
                               params={k: v for k, v in {"all_workspaces": all_workspaces, "action": action,
                                                         "limit": limit}.items() if v not in (None, False)})
    if json:
        return print_json(rows)
    table(rows, [("WHEN", "at"), ("ACTION", "action"), ("OUTCOME", "outcome"), ("ACTOR", "actor_user_id"),
                 ("RESOURCE", lambda r: f"{r['resource_type'] or ''} {r['resource_id'] or ''}".strip()),
                 ("WORKSPACE", "workspace_id")])
