"""Publishers, offers and subscriptions built through the REST API, for the marketplace tests."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from tests.support.server import Server
from tests.support.tenants import ok, unique

TERMS = "You may call this model. The publisher receives your contact, usage volume and charges."


@dataclass
class Publisher:
    name: str
    user: str
    key: str  # a publisher API key (mpp_...)


def make_publisher(server: Server, name: str | None = None) -> Publisher:
    """A publisher (made by the platform admin unless it exists), a user of it and its key."""
    name = name or unique("pub")
    user = unique(f"{name.lower()}-u")
    with server.client() as admin:
        if admin.get(f"/api/v1/publishers/{name}").status_code == 404:
            ok(admin.post("/api/v1/publishers", json={"name": name}), 201)
        ok(admin.post("/api/v1/users", json={"name": user}), 201)
        ok(admin.post(f"/api/v1/publishers/{name}/users", json={"user": user}), 201)
        key = ok(admin.post(f"/api/v1/publishers/{name}/apikeys", json={"user": user}), 201).json()["key"]
    return Publisher(name=name, user=user, key=key)


def create_offer(server: Server, key: str, model: str, *, input_price: str = "0.5", output_price: str = "1.5",
                 currency: str = "USD", terms: str = TERMS, version: str = "1", **fields: object) -> dict:
    with server.client(key) as c:
        return ok(c.post("/api/v1/marketplace/offers", json={
            "model": model, "currency": currency, "input_price": input_price, "output_price": output_price,
            "terms": {"version": version, "text": terms}, **fields}), 201).json()


def subscribe(server: Server, key: str, offer: dict, *, consent: bool = True, contact: dict | None = None) -> dict:
    """Subscribe with `key`'s workspace, accepting the offer's terms as they are now."""
    contact = contact or {"name": "Ada Buyer", "email": "ada@example.org", "organization": "Buyers Ltd"}
    with server.client(key) as c:
        current = ok(c.get(f"/api/v1/marketplace/offers/{offer['id']}")).json()["terms"]["sha256"]
        return ok(c.post("/api/v1/marketplace/subscriptions", json={
            "offer": offer["id"], "contact": contact, "accept_terms_sha256": current,
            "consent_to_share_contact": consent}), 201).json()


def publisher_record(admin: httpx.Client, name: str) -> None:
    """Make sure the publisher record `name` exists (a catalog-wide import must name one)."""
    if admin.get(f"/api/v1/publishers/{name}").status_code == 404:
        r = admin.post("/api/v1/publishers", json={"name": name})
        assert r.status_code in (201, 409), r.text
