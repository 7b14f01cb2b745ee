"""The marketplace commands against a live server, as a platform admin, a publisher and a buyer
would type them: publishers, publisher keys, offers, subscribing, calling, usage with its chart,
budgets and the publisher's report, each as a table and as --json."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.inference import CHAT_MODEL, wait_state
from tests.support.server import Server, loopback_client, start_lean
from tests.support.tenants import make_tenant


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_lean(tmp_path_factory.mktemp("cli-market") / "home", {CHAT_MODEL: "echo"})
    try:
        yield s
    finally:
        s.stop()


def test_sell_subscribe_call_and_report_from_the_cli(server: Server, tmp_path: Path) -> None:
    s = server
    s.cli("users", "create", "seller", check=True)
    r = s.cli("publishers", "create", "acme-pub", "--display-name", "Acme", check=True)
    assert "Created publisher acme-pub" in r.stdout
    s.cli("publishers", "add-user", "HuggingFaceTB", "seller", check=True)
    assert "HuggingFaceTB" in s.cli("publishers", "list", check=True).stdout
    shown = json.loads(s.cli("publishers", "show", "HuggingFaceTB", "--json", check=True).stdout)
    assert shown["users"] == ["seller"]
    pkey = s.cli("apikeys", "create", "--publisher", "HuggingFaceTB", "--user", "seller", check=True).stdout.strip()
    assert pkey.startswith("mpp_")

    terms = tmp_path / "terms.txt"
    terms.write_text("Use it kindly.\n")
    r = s.cli("offers", "create", CHAT_MODEL, "--currency", "EUR", "--input-price", "0.2", "--output-price", "0.6",
              "--terms-file", str(terms), key=pkey, check=True)
    assert "Created offer offer_" in r.stdout
    (offer,) = json.loads(s.cli("offers", "list", "--json", key=pkey, check=True).stdout)
    assert (offer["input_price"], offer["output_price"], offer["currency"]) == ("0.2", "0.6", "EUR")
    assert "Use it kindly." not in s.cli("offers", "show", offer["id"], key=pkey, check=True).stdout

    t = make_tenant(s)
    owner = t.keys["owner"]
    assert offer["id"] in s.cli("marketplace", "offers", key=owner, check=True).stdout
    assert "Use it kindly." in s.cli("marketplace", "show", offer["id"], "--terms", key=owner, check=True).stdout
    r = s.cli("deployments", "create", "sold", "--model", CHAT_MODEL, "--type", "serverless", key=owner)
    assert r.returncode == 1 and "modelport marketplace subscribe" in r.stderr
    r = s.cli("marketplace", "subscribe", offer["id"], "--name", "Bo", "--email", "bo@example.org", key=owner)
    assert r.returncode != 0 and "--accept-terms" in r.stderr
    r = s.cli("marketplace", "subscribe", offer["id"], "--name", "Bo", "--email", "bo@example.org",
              "--accept-terms", key=owner)
    assert r.returncode == 1 and "consent" in r.stderr  # the offer requires contact sharing
    r = s.cli("marketplace", "subscribe", offer["id"], "--name", "Bo", "--email", "bo@example.org",
              "--organization", "Bo Inc", "--accept-terms", "--consent", key=owner, check=True)
    assert "Subscribed to" in r.stdout
    subs = json.loads(s.cli("marketplace", "subscriptions", "--json", key=owner, check=True).stdout)
    assert [x["state"] for x in subs] == ["active"]

    created = json.loads(s.cli("deployments", "create", "sold", "--model", CHAT_MODEL, "--type", "serverless",
                               "--json", key=owner, check=True).stdout)
    wait_state(s, "sold", key=owner)
    with loopback_client(base_url=s.url, headers={"Authorization": f"Bearer {created['keys']['primary']}"}) as c:
        u = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "a b c"}],
                                                 "max_tokens": 6}).json()["usage"]
    assert (u["prompt_tokens"], u["completion_tokens"]) == (4, 6)

    r = s.cli("usage", key=owner, check=True)
    assert "sold" in r.stdout and "0.0044 EUR" in r.stdout and "█" in r.stdout  # 4*0.2/1000 + 6*0.6/1000
    rows = json.loads(s.cli("usage", "--group-by", "offer", "--json", key=owner, check=True).stdout)["rows"]
    assert rows[0]["group"] == offer["id"] and rows[0]["charges"] == "0.0044"
    assert s.cli("usage", "--csv", key=owner, check=True).stdout.splitlines()[1].startswith("sold,EUR,1,4,6,")
    every = json.loads(s.cli("usage", "--all", "--json", check=True).stdout)["rows"]
    assert any(r["workspace"] == t.name for r in every)
    assert s.cli("usage", "--all", key=owner).returncode == 1  # chargeback is for platform admins

    r = s.cli("budget", "set", "5", "--currency", "EUR", key=owner, check=True)
    assert "5 EUR a month" in r.stdout
    (b,) = json.loads(s.cli("budget", "show", "--json", key=owner, check=True).stdout)
    assert b["spent"] == "0.0044" and b["remaining"] == "4.9956"

    report = json.loads(s.cli("publisher", "report", "--json", key=pkey, check=True).stdout)
    (row,) = report["rows"]
    assert row["contact"] == {"name": "Bo", "email": "bo@example.org", "organization": "Bo Inc"}
    assert (row["requests"], row["input_tokens"], row["output_tokens"], row["charges"]) == (1, 4, 6, "0.0044")
    assert "Bo <bo@example.org>" in s.cli("publisher", "report", key=pkey, check=True).stdout
    assert "bo@example.org" in s.cli("publisher", "report", "--csv", key=pkey, check=True).stdout
    assert "Bo <bo@example.org>" in s.cli("publisher", "subscriptions", key=pkey, check=True).stdout

    r = s.cli("offers", "set-prices", offer["id"], "--input-price", "0.3", key=pkey, check=True)
    assert "0.3 / 0.6 EUR" in r.stdout
    r = s.cli("marketplace", "unsubscribe", offer["id"], "--yes", key=owner, check=True)
    assert "suspended" in r.stdout
    assert json.loads(s.cli("deployments", "show", "sold", "--json", key=owner, check=True).stdout)["state"] \
        == "suspended"
    terms.write_text("Version two.\n")
    assert "version 2" in s.cli("offers", "add-terms", offer["id"], "2", "--terms-file", str(terms), key=pkey,
                                check=True).stdout
    assert "Retired terms version 1" in s.cli("offers", "retire-terms", offer["id"], "1", key=pkey,
                                              check=True).stdout
    assert "Retired offer" in s.cli("offers", "retire", offer["id"], key=pkey, check=True).stdout
