"""CLI: publishers, offers, the marketplace (subscriptions), usage and charges, budgets, and the
publisher's report."""

from __future__ import annotations

import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer

from modelport.cli.common import JsonOpt, client, handle_errors
from modelport.cli.output import console, err_console, kv, print_json, table

publishers = typer.Typer(help="Publishers: organisations that sell offers for catalog models (platform admin).",
                         no_args_is_help=True)
offers = typer.Typer(help="Offers of catalog models: prices, terms (platform admin or the model's publisher).",
                     no_args_is_help=True)
marketplace = typer.Typer(help="Browse offers and manage this workspace's subscriptions.", no_args_is_help=True)
publisher = typer.Typer(help="What a publisher sees: its subscriptions and report (publisher API key).",
                        no_args_is_help=True)
budget = typer.Typer(help="The workspace's monthly budget per currency (owners set it).", no_args_is_help=True)

FromOpt = Annotated[str | None, typer.Option("--from", help="Start, ISO 8601 with a zone (default: this month).")]
ToOpt = Annotated[str | None, typer.Option("--to", help="End, exclusive (default: now).")]


def _params(**kw: object) -> dict:
    return {k: v for k, v in kw.items() if v not in (None, False)}


# -- publishers --------------------------------------------------------------------------------

@publishers.command("create")
@handle_errors
def pub_create(ctx: typer.Context, name: str, display_name: str = "", json: JsonOpt = False) -> None:
    """Create a publisher (platform admin)."""
    p = client(ctx).request("POST", "/api/v1/publishers", json={"name": name, "display_name": display_name})
    if json:
        return print_json(p)
    console.print(f"Created publisher [bold]{p['name']}[/bold] ({p['id']}).")


@publishers.command("list")
@handle_errors
def pub_list(ctx: typer.Context, json: JsonOpt = False) -> None:
    """List the publishers (platform admin)."""
    rows = client(ctx).request("GET", "/api/v1/publishers")
    if json:
        return print_json(rows)
    table(rows, [("NAME", "name"), ("ID", "id"), ("DISPLAY NAME", "display_name"), ("CREATED", "created_at")])


@publishers.command("show")
@handle_errors
def pub_show(ctx: typer.Context, name: str, json: JsonOpt = False) -> None:
    """Show a publisher and its users (platform admin, or the publisher's own key)."""
    p = client(ctx).request("GET", f"/api/v1/publishers/{name}")
    if json:
        return print_json(p)
    kv(p, [("Name", "name"), ("ID", "id"), ("Display name", "display_name"), ("Users", "users"),
           ("Created", "created_at")])


@publishers.command("add-user")
@handle_errors
def pub_add_user(ctx: typer.Context, name: str, user: str, json: JsonOpt = False) -> None:
    """Make USER a user of publisher NAME (platform admin); then give it a key with `apikeys create --publisher`."""
    p = client(ctx).request("POST", f"/api/v1/publishers/{name}/users", json={"user": user})
    if json:
        return print_json(p)
    console.print(f"{user} is now a user of {p['name']}.")


@publishers.command("rename")
@handle_errors
def pub_rename(ctx: typer.Context, name: str, new_name: str,
               display_name: Annotated[str | None, typer.Option(help="Also set the display name.")] = None,
               json: JsonOpt = False) -> None:
    """Rename publisher NAME to NEW_NAME (platform admin); its models show the new name, its keys keep working."""
    body: dict[str, str] = {"name": new_name}
    if display_name is not None:
        body["display_name"] = display_name
    p = client(ctx).request("PATCH", f"/api/v1/publishers/{name}", json=body)
    if json:
        return print_json(p)
    console.print(f"Publisher {name} is now [bold]{p['name']}[/bold] ({p['id']}).")


@publishers.command("delete")
@handle_errors
def pub_delete(ctx: typer.Context, name: str,
               yes: Annotated[bool, typer.Option("--yes", help="Confirm: its users' memberships and API keys "
                                                               "are deleted with it.")] = False) -> None:
    """Delete publisher NAME with its memberships and API keys (platform admin). Refused while offers or
    catalog models refer to it."""
    if not yes:
        raise typer.BadParameter("deleting a publisher deletes its API keys too; add --yes to confirm",
                                 param_hint="--yes")
    client(ctx).request("DELETE", f"/api/v1/publishers/{name}")
    console.print(f"Deleted publisher {name}.")


def list_publisher_keys(ctx: typer.Context, publisher_name: str, json: bool) -> None:
    """`apikeys list --publisher P`: a publisher's keys, revoked ones too (never their secrets)."""
    rows = client(ctx).request("GET", f"/api/v1/publishers/{publisher_name}/apikeys")
    if json:
        return print_json(rows)
    table(rows, [("ID", "id"), ("NAME", "name"), ("USER", "user_id"), ("CREATED", "created_at"),
                 ("CREATED BY", "created_by"), ("REVOKED", "revoked_at")])


def revoke_publisher_key(ctx: typer.Context, publisher_name: str, key_id: str, json: bool) -> None:
    """`apikeys revoke KEY_ID --publisher P`: the key stops working at once."""
    k = client(ctx).request("DELETE", f"/api/v1/publishers/{publisher_name}/apikeys/{key_id}")
    if json:
        return print_json(k)
    console.print(f"Revoked publisher API key {k['id']}.")


def create_publisher_key(ctx: typer.Context, publisher_name: str, user: str, name: str, json: bool) -> None:
    """`apikeys create --publisher P --user U`: a publisher key, printed once on stdout."""
    k = client(ctx).request("POST", f"/api/v1/publishers/{publisher_name}/apikeys", json={"user": user, "name": name})
    if json:
        return print_json(k)
    err_console.print(f"Created publisher API key {k['id']} (no workspace powers). Store it now; it is not shown "
                      "again:")
    console.print(k["key"], highlight=False, soft_wrap=True)


# -- offers (sellers) ---------------------------------------------------------------------------

def _offer_kv(o: dict) -> None:
    kv(o, [("Offer", "id"), ("Model", "model"), ("Publisher", "publisher"), ("State", "state"),
           ("Price / 1K input", lambda d: f"{d['input_price']} {d['currency']}"),
           ("Price / 1K output", lambda d: f"{d['output_price']} {d['currency']}"),
           ("Deployment types", "deployment_types"), ("Contact sharing", "contact_sharing_required"),
           ("Terms", lambda d: f"version {d['terms']['version']}, sha256 {d['terms']['sha256']}"),
           ("Created", "created_at"), ("Retired", "retired_at")])


def _offer_table(rows: list[dict]) -> None:
    table(rows, [("OFFER", "id"), ("MODEL", "model"), ("PUBLISHER", "publisher"), ("CURRENCY", "currency"),
                 ("/1K IN", "input_price"), ("/1K OUT", "output_price"), ("TYPES", "deployment_types"),
                 ("TERMS", lambda r: r["terms"]["version"]), ("STATE", "state")])


@offers.command("create")
@handle_errors
def offer_create(ctx: typer.Context, model: str,
                 currency: Annotated[str, typer.Option(help="ISO 4217 code, e.g. USD.")],
                 input_price: Annotated[str, typer.Option(help="Price per 1,000 input tokens (decimal).")],
                 output_price: Annotated[str, typer.Option(help="Price per 1,000 output tokens (decimal).")],
                 terms_file: Annotated[Path, typer.Option("--terms-file", help="The terms, a text file.")],
                 terms_version: Annotated[str, typer.Option(help="The terms' version.")] = "1",
                 deployment_type: Annotated[list[str] | None, typer.Option(help="serverless (default) and/or "
                                                                                 "dedicated; repeat.")] = None,
                 no_contact_sharing: Annotated[bool, typer.Option("--no-contact-sharing",
                                                                  help="Subscribers need not consent to share "
                                                                       "their contact.")] = False,
                 json: JsonOpt = False) -> None:
    """Offer a catalog-wide model for sale (platform admin, or the model's publisher with its key)."""
    text = terms_file.read_text(encoding="utf-8")
    o = client(ctx).request("POST", "/api/v1/marketplace/offers", json={
        "model": model, "currency": currency, "input_price": input_price, "output_price": output_price,
        "terms": {"version": terms_version, "text": text}, "contact_sharing_required": not no_contact_sharing,
        "deployment_types": deployment_type or ["serverless"]})
    if json:
        return print_json(o)
    console.print(f"Created offer [bold]{o['id']}[/bold] for {o['model']}.")


@offers.command("list")
@handle_errors
def offer_list(ctx: typer.Context, json: JsonOpt = False) -> None:
    """List offers: a publisher key its own, a platform admin all, a workspace the active ones."""
    rows = client(ctx).request("GET", "/api/v1/marketplace/offers")
    if json:
        return print_json(rows)
    _offer_table(rows)


@offers.command("show")
@handle_errors
def offer_show(ctx: typer.Context, offer: str, json: JsonOpt = False) -> None:
    """Show an offer: prices, terms versions, state."""
    o = client(ctx).request("GET", f"/api/v1/marketplace/offers/{offer}")
    if json:
        return print_json(o)
    _offer_kv(o)


@offers.command("set-prices")
@handle_errors
def offer_set_prices(ctx: typer.Context, offer: str,
                     input_price: Annotated[str | None, typer.Option(help="New price per 1,000 input tokens.")] = None,
                     output_price: Annotated[str | None, typer.Option(help="New price per 1,000 output "
                                                                           "tokens.")] = None,
                     json: JsonOpt = False) -> None:
    """Change an offer's prices: requests that start from now are charged at them, earlier ones not."""
    o = client(ctx).request("PATCH", f"/api/v1/marketplace/offers/{offer}",
                            json=_params(input_price=input_price, output_price=output_price))
    if json:
        return print_json(o)
    console.print(f"Offer {o['id']} now costs {o['input_price']} / {o['output_price']} {o['currency']} per 1K "
                  "input / output tokens.")


@offers.command("retire")
@handle_errors
def offer_retire(ctx: typer.Context, offer: str, json: JsonOpt = False) -> None:
    """Retire an offer: no new subscriptions (existing ones keep working)."""
    o = client(ctx).request("POST", f"/api/v1/marketplace/offers/{offer}/retire")
    if json:
        return print_json(o)
    console.print(f"Retired offer {o['id']}.")


@offers.command("add-terms")
@handle_errors
def offer_add_terms(ctx: typer.Context, offer: str, version: str,
                    terms_file: Annotated[Path, typer.Option("--terms-file", help="The new terms, a text file.")],
                    json: JsonOpt = False) -> None:
    """Publish a new terms version: new subscriptions accept it, existing ones keep theirs until retired."""
    o = client(ctx).request("POST", f"/api/v1/marketplace/offers/{offer}/terms",
                            json={"version": version, "text": terms_file.read_text(encoding="utf-8")})
    if json:
        return print_json(o)
    console.print(f"Offer {o['id']} now has terms version {o['terms']['version']} (sha256 {o['terms']['sha256']}).")


@offers.command("retire-terms")
@handle_errors
def offer_retire_terms(ctx: typer.Context, offer: str, version: str, json: JsonOpt = False) -> None:
    """Retire an old terms version: subscriptions that accepted it stop until they accept the current one."""
    o = client(ctx).request("POST", f"/api/v1/marketplace/offers/{offer}/terms/{version}/retire")
    if json:
        return print_json(o)
    console.print(f"Retired terms version {version} of {o['id']}.")


# -- the marketplace (buyers) -------------------------------------------------------------------

@marketplace.command("offers")
@handle_errors
def market_offers(ctx: typer.Context, json: JsonOpt = False) -> None:
    """List the offers this workspace can subscribe to."""
    offer_list(ctx, json)


@marketplace.command("show")
@handle_errors
def market_show(ctx: typer.Context, offer: str,
                terms: Annotated[bool, typer.Option("--terms", help="Print the current terms' text.")] = False,
                json: JsonOpt = False) -> None:
    """Show an offer; --terms prints the text of its current terms."""
    c = client(ctx)
    o = c.request("GET", f"/api/v1/marketplace/offers/{offer}")
    text = c.request("GET", f"/api/v1/marketplace/offers/{offer}/terms/{o['terms']['version']}") if terms else None
    if json:
        return print_json({**o, "terms_text": text["text"] if text else None})
    _offer_kv(o)
    if text:
        console.print(text["text"], markup=False, highlight=False)


@marketplace.command("subscribe")
@handle_errors
def market_subscribe(ctx: typer.Context, offer: str,
                     name: Annotated[str, typer.Option(help="Contact name to share.")],
                     email: Annotated[str, typer.Option(help="Contact email to share.")],
                     organization: Annotated[str, typer.Option(help="Contact organisation.")] = "",
                     accept_terms: Annotated[bool, typer.Option("--accept-terms", help="Accept the offer's current "
                                                                "terms (shown by 'marketplace show --terms').")]
                     = False,
                     consent: Annotated[bool, typer.Option("--consent", help="Consent to share the contact with "
                                                           "the publisher (with usage volume and charges; never "
                                                           "prompts or outputs).")] = False,
                     json: JsonOpt = False) -> None:
    """Subscribe this workspace to an offer (owners and contributors); its deployments may then be created."""
    if not accept_terms:
        raise typer.BadParameter("read the terms ('modelport marketplace show OFFER --terms') and pass "
                                 "--accept-terms", param_hint="--accept-terms")
    c = client(ctx)
    o = c.request("GET", f"/api/v1/marketplace/offers/{offer}")
    sub = c.request("POST", "/api/v1/marketplace/subscriptions", json={
        "offer": o["id"], "contact": {"name": name, "email": email, "organization": organization},
        "accept_terms_sha256": o["terms"]["sha256"], "consent_to_share_contact": consent})
    if json:
        return print_json(sub)
    console.print(f"Subscribed to {sub['offer']} ({sub['model']}): subscription {sub['id']}, terms version "
                  f"{sub['terms_version']}.")


@marketplace.command("subscriptions")
@handle_errors
def market_subscriptions(ctx: typer.Context, json: JsonOpt = False) -> None:
    """List this workspace's subscriptions."""
    rows = client(ctx).request("GET", "/api/v1/marketplace/subscriptions")
    if json:
        return print_json(rows)
    table(rows, [("SUBSCRIPTION", "id"), ("OFFER", "offer"), ("MODEL", "model"), ("PUBLISHER", "publisher"),
                 ("STATE", "state"), ("TERMS", "terms_version"), ("CONSENT", "consent_at"),
                 ("SINCE", "created_at")])


@marketplace.command("unsubscribe")
@handle_errors
def market_unsubscribe(ctx: typer.Context, subscription: str,
                       yes: Annotated[bool, typer.Option("--yes", help="Confirm without asking.")] = False,
                       json: JsonOpt = False) -> None:
    """Cancel a subscription (by its id or the offer's): the workspace's deployments of it are suspended."""
    if not yes:
        typer.confirm("Unsubscribe? This workspace's deployments of the offer stop serving.", abort=True)
    sub = client(ctx).request("DELETE", f"/api/v1/marketplace/subscriptions/{subscription}")
    if json:
        return print_json(sub)
    console.print(f"Cancelled {sub['id']}; deployments of {sub['model']} are suspended until you subscribe again.")


# -- usage and budgets -------------------------------------------------------------------------

@handle_errors
def usage(ctx: typer.Context, start: FromOpt = None, end: ToOpt = None,
          group_by: Annotated[str, typer.Option(help="deployment | model | offer | day")] = "deployment",
          all_workspaces: Annotated[bool, typer.Option("--all", help="Platform admins: every workspace "
                                                                     "(chargeback).")] = False,
          csv: Annotated[bool, typer.Option("--csv", help="Print CSV.")] = False,
          json: JsonOpt = False) -> None:
    """Show token usage and charges, with a small chart of output tokens (default: this month by deployment)."""
    params = _params(**{"from": start, "to": end, "group_by": group_by, "all_workspaces": all_workspaces})
    c = client(ctx)
    if csv:
        with c.http() as http:
            r = http.get("/api/v1/usage", params={**params, "format": "csv"})
        if r.status_code >= 400:
            c.check(r)
        sys.stdout.write(r.text)
        return
    out = c.request("GET", "/api/v1/usage", params=params)
    if json:
        return print_json(out)
    rows = out["rows"]
    columns: list[tuple[str, str | Callable[[dict], Any]]] = [
        (group_by.upper(), "group"), ("REQUESTS", "requests"), ("INPUT TOKENS", "input_tokens"),
               ("OUTPUT TOKENS", "output_tokens"), ("CHARGES", lambda r: f"{r['charges']} {r['currency'] or ''}")]
    if all_workspaces:
        columns.insert(0, ("WORKSPACE", "workspace"))
    table(rows, columns, title=f"Usage {out['from']} to {out['to']}")
    chart(rows)


def chart(rows: list[dict], width: int = 40) -> None:
    """A bar per row: its share of the largest token count (input + output)."""
    if not rows:
        return
    totals = [(f"{r['workspace'] + ' ' if r.get('workspace') else ''}{r['group']}", r["input_tokens"]
               + r["output_tokens"]) for r in rows]
    top = max(t for _, t in totals) or 1
    label = max(len(n) for n, _ in totals)
    for name, total in totals:
        bar = "█" * max(1 if total else 0, round(width * total / top))
        console.print(f"{name:<{label}} {bar} {total}", markup=False, highlight=False)


@budget.command("set")
@handle_errors
def budget_set(ctx: typer.Context, amount: str,
               currency: Annotated[str, typer.Option(help="ISO 4217 code.")] = "USD",
               json: JsonOpt = False) -> None:
    """Set the workspace's budget per calendar month in CURRENCY (owners); calls stop with 403 once it is spent."""
    try:
        Decimal(amount)
    except ArithmeticError:
        raise typer.BadParameter("amount is a decimal number such as 250.00", param_hint="AMOUNT") from None
    b = client(ctx).request("PUT", f"/api/v1/budgets/{currency}", json={"amount": amount})
    if json:
        return print_json(b)
    console.print(f"Budget {b['amount']} {b['currency']} a month; {b['spent']} spent in {b['month']}, "
                  f"{b['remaining']} left.")


@budget.command("show")
@handle_errors
def budget_show(ctx: typer.Context, json: JsonOpt = False) -> None:
    """Show the workspace's budgets: amount, spent this month, what remains."""
    rows = client(ctx).request("GET", "/api/v1/budgets")
    if json:
        return print_json(rows)
    table(rows, [("CURRENCY", "currency"), ("AMOUNT", "amount"), ("MONTH", "month"), ("SPENT", "spent"),
                 ("REMAINING", "remaining"), ("EXHAUSTED", "exhausted")])


# -- what a publisher sees --------------------------------------------------------------------

@publisher.command("report")
@handle_errors
def publisher_report(ctx: typer.Context, start: FromOpt = None, end: ToOpt = None,
                     offer: Annotated[str | None, typer.Option(help="One of your offers.")] = None,
                     csv: Annotated[bool, typer.Option("--csv", help="Print CSV.")] = False,
                     json: JsonOpt = False) -> None:
    """Usage volume and charges per subscription and day, with the contact subscribers consented to share."""
    params = _params(**{"from": start, "to": end, "offer": offer})
    c = client(ctx)
    if csv:
        with c.http() as http:
            r = http.get("/api/v1/publisher/report", params={**params, "format": "csv"})
        if r.status_code >= 400:
            c.check(r)
        sys.stdout.write(r.text)
        return
    out = c.request("GET", "/api/v1/publisher/report", params=params)
    if json:
        return print_json(out)
    table(out["rows"], [("DAY", "day"), ("SUBSCRIPTION", "subscription"), ("OFFER", "offer"),
                        ("CONTACT", lambda r: f"{r['contact']['name']} <{r['contact']['email']}>"
                         if r["contact"] else "(not shared)"),
                        ("REQUESTS", "requests"), ("INPUT TOKENS", "input_tokens"),
                        ("OUTPUT TOKENS", "output_tokens"), ("CHARGES", lambda r: f"{r['charges']} {r['currency']}")],
          title=f"{out['publisher']}: {out['from']} to {out['to']}")


@publisher.command("subscriptions")
@handle_errors
def publisher_subscriptions(ctx: typer.Context, json: JsonOpt = False) -> None:
    """The subscriptions to your offers (contact only where shared)."""
    rows = client(ctx).request("GET", "/api/v1/publisher/subscriptions")
    if json:
        return print_json(rows)
    table(rows, [("SUBSCRIPTION", "subscription"), ("OFFER", "offer"), ("STATE", "state"),
                 ("TERMS", "terms_version"),
                 ("CONTACT", lambda r: f"{r['contact']['name']} <{r['contact']['email']}>" if r["contact"]
                  else "(not shared)"), ("SINCE", "created_at")])
