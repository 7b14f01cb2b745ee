"""The `modelport` CLI against a real server: status, tables, --json, keys, workspaces, users,
and errors as one clean line.

Commands run in this process (typer's CliRunner, real HTTP to the server); the tests named
`..._installed_...` run the installed `modelport` entry point in a subprocess, to prove that the
command a user types works: its exit codes, and errors without tracebacks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from tests.support.cli import assert_clean_error, cli_json, table
from tests.support.server import Server, free_port_url, lean_server
from tests.support.tenants import import_tiny_gguf, make_tenant

KEY_RE = re.compile(r"^mpk_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from lean_server(tmp_path_factory)


def test_status_through_the_installed_command(server: Server) -> None:
    r = server.installed_cli("status")
    assert r.returncode == 0, r.stderr
    assert "Ready" in r.stdout and "admin in default (owner)" in r.stdout
    assert re.search(r"Migrations\s+ok", r.stdout) and re.search(r"Database\s+ok", r.stdout)
    s = cli_json(server, "status")
    assert (s["alive"], s["ready"], s["checks"]) == (True, True, {"database": "ok", "migrations": "ok"})
    assert (s["me"]["user"], s["me"]["platform_admin"]) == ("admin", True)
    # With a key that does not work, status still reports health, and says so.
    r = server.cli("--api-key", "mpk_0000000000000000_" + "A" * 43, "status", check=True)
    assert "not signed in" in r.stdout


def test_unreachable_server_is_one_clean_line_from_the_installed_command(server: Server) -> None:
    assert_clean_error(server.installed_cli("--url", free_port_url(), "status"), None, "Cannot reach modelport")
    assert_clean_error(server.installed_cli("--url", free_port_url(), "models", "list"), None,
                       "is the server running")
    assert_clean_error(server.installed_cli("models", "show", "no-such-model"), 404, "not found")


LISTS = [
    (("workspaces", "list"), list),
    (("workspaces", "members"), list),
    (("users", "list"), list),
    (("apikeys", "list"), list),
    (("models", "list"), dict),
    (("audit",), list),
]


@pytest.mark.parametrize(("args", "kind"), LISTS, ids=[" ".join(a) for a, _ in LISTS])
def test_json_output_parses(server: Server, args: tuple[str, ...], kind: type) -> None:
    data = cli_json(server, *args)
    assert isinstance(data, kind) and data  # something to show on a fresh installation


def test_tables_are_readable(server: Server) -> None:
    users = server.cli("users", "list", check=True).stdout
    headers, rows = table(users)
    assert headers == ["NAME", "ID", "EMAIL", "ADMIN", "DISABLED"]
    admin = dict(zip(headers, next(r for r in rows if r[0] == "admin"), strict=True))
    assert re.fullmatch(r"usr_[0-9a-f]{16}", admin["ID"]) and (admin["ADMIN"], admin["DISABLED"]) == ("yes", "no")
    headers, rows = table(server.cli("workspaces", "list", check=True).stdout)
    assert headers[:3] == ["NAME", "ID", "YOUR ROLE"] and ["default", "owner"] == [rows[0][0], rows[0][2]]
    keys = server.cli("apikeys", "list", check=True).stdout
    headers, rows = table(keys)
    assert headers == ["ID", "NAME", "USER", "CREATED", "CREATED BY", "PLATFORM", "EXPIRES", "LAST USED", "REVOKED"]
    assert any(r[1] == "admin" and r[0].startswith("key_") for r in rows)
    for out in (users, keys):
        assert "{" not in out and "mpk_" not in out  # a table, and never a secret


def test_api_key_lifecycle(server: Server) -> None:
    r = server.cli("apikeys", "create", "--name", "ci", check=True)
    key = r.stdout.strip()
    assert KEY_RE.match(key), "only the key on stdout, so that scripts can capture it"
    assert "Store it now" in r.stderr
    me = cli_json(server, "status", key=key)["me"]
    listed = cli_json(server, "apikeys", "list")
    row = next(k for k in listed if k["id"] == me["key_id"])
    assert (row["name"], row["revoked_at"], row["prefix"]) == ("ci", None, key[:20])
    assert key not in json.dumps(listed)
    r = server.cli("apikeys", "revoke", me["key_id"], check=True)
    assert f"Revoked {me['key_id']}" in r.stdout
    assert_clean_error(server.cli("apikeys", "list", key=key), 401, "revoked")
    assert_clean_error(server.cli("apikeys", "create", "--expires-in-days", "0"), 422, "expires_in_days")
    k = cli_json(server, "apikeys", "create", "--name", "temp", "--expires-in-days", "7")
    assert k["expires_at"] and KEY_RE.match(k["key"])


def test_workspaces_and_users(server: Server) -> None:
    u = cli_json(server, "users", "create", "alice", "--email", "alice@example.org")
    assert (u["name"], u["email"], u["platform_admin"], u["disabled"]) == ("alice", "alice@example.org", False, False)
    assert_clean_error(server.cli("users", "create", "alice"), 409, "already exists")
    r = server.cli("workspaces", "create", "team", "--owner", "alice", "--description", "the team", check=True)
    assert re.search(r"Created workspace team \(ws_[0-9a-f]{16}\)", r.stdout)
    assert cli_json(server, "workspaces", "show", "team")["description"] == "the team"
    r = server.cli("workspaces", "add-member", "admin", "--role", "owner", "--to", "team", check=True)
    assert "Added admin as owner" in r.stdout
    in_team = ("--workspace", "team")
    with server.client() as admin:
        assert admin.post("/api/v1/users", json={"name": "bob"}).status_code == 201
    server.cli(*in_team, "workspaces", "add-member", "bob", "--role", "reader", check=True)
    assert "bob is now contributor" in server.cli(*in_team, "workspaces", "set-role", "bob", "contributor",
                                                  check=True).stdout
    members = {m["user"]: m["role"] for m in cli_json(server, *in_team, "workspaces", "members")}
    assert members == {"alice": "owner", "admin": "owner", "bob": "contributor"}
    bob_key = cli_json(server, "apikeys", "create", "--user", "bob", "--workspace", "team")["key"]
    with server.client(bob_key) as bob:
        assert bob.get("/api/v1/me").json()["workspace"] == "team"
    assert "Removed bob" in server.cli(*in_team, "workspaces", "remove-member", "bob", check=True).stdout
    assert_clean_error(server.cli("apikeys", "list", key=bob_key), 401, "revoked")
    assert "Disabled alice" in server.cli("users", "disable", "alice", check=True).stdout
    assert "Enabled alice" in server.cli("users", "enable", "alice", check=True).stdout
    # A bad role is a usage error (exit 2) with the option named, not a traceback.
    r = server.cli(*in_team, "workspaces", "add-member", "bob", "--role", "king")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "role must be one of" in r.stderr
    # delete asks first; "n" keeps the workspace
    r = server.cli("workspaces", "delete", "team", input="n\n")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    with server.client() as admin:
        assert admin.get("/api/v1/workspaces/team").status_code == 200
    assert "Deleted workspace team" in server.cli("workspaces", "delete", "team", "--yes", check=True).stdout
    assert_clean_error(server.cli("workspaces", "show", "team"), 404, "not found")


def test_errors_are_one_clean_line(server: Server) -> None:
    team = make_tenant(server, "errs")
    reader = team.keys["reader"]
    assert_clean_error(server.cli("models", "show", "no-such-model"), 404, "not found")
    assert_clean_error(server.cli("--api-key", "not-a-key", "models", "list"), 401, "Invalid API key")
    assert_clean_error(server.cli("users", "list", key=reader), 403, "platform admin")
    assert_clean_error(server.cli("workspaces", "add-member", "admin", key=reader), 403, "does not allow")
    # the schema's pattern refuses it (422), and the pattern reaches the terminal whole (no rich markup)
    assert_clean_error(server.cli("users", "create", "Not A Name"), 422, "^[a-z0-9][a-z0-9._-]{0,62}$")
    assert_clean_error(server.cli("--workspace", "errs", "models", "list"), 404, "not found among your memberships")
    assert_clean_error(server.cli("audit", key=reader), 403, "does not allow audit.read")


def test_models_show_prints_the_card_as_text(server: Server, tmp_path) -> None:
    """The card is the publisher's text: shown rendered, with every terminal control sequence and
    bidirectional override removed and rich markup shown as typed, never interpreted."""
    card = ("# Tiny model\n\nGood for **tests**.\n\n"
            "Escapes: \x1b[2J\x1b]0;pwned\x07 \x1b]52;c;Y2xpcGJvYXJk\x07 carriage\rreturn back\x08space\n"
            "Markup: [red]not red[/red] [/] [link=https://evil.example]here[/link]\n"
            "Bidi: \u202eelif.exe\u202c and C1: \x9b31m\n")
    with server.client() as admin:
        m = import_tiny_gguf(admin, tmp_path, card=card, publisher="Pub\x1b[31m")
    r = server.cli("models", "show", m["name"], check=True)
    out = r.stdout
    assert "Tiny model" in out and "Good for tests." in out.replace("**", "")
    assert "[red]not red[/red]" in out and "[/]" in out and "[link=https://evil.example]here[/link]" in out
    for forbidden in ("\x1b", "\x07", "\r", "\x08", "\u202e", "\u202c", "\x9b"):
        assert forbidden not in out + r.stderr, repr(forbidden)
    assert "Escapes:" in out and "carriagereturn" in out and "elif.exe" in out
    assert "Pub[31m" in out  # the publisher cell too: the escape character is gone, the rest is text
    shown = cli_json(server, "models", "show", m["name"])
    assert shown["card"] == card  # --json gives the exact text (JSON escapes it)
