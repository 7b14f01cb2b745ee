"""Wire schemas of publishers, offers, subscriptions and publisher reports (control plane).

Prices are decimal strings ("0.0005"), never floats, and are computed with Decimal throughout.
The publisher-side models are allow-lists: a field that is not declared here never reaches a
publisher, whatever the service returns.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DeploymentType = Literal["dedicated", "serverless"]
SERVERLESS_ONLY: tuple[DeploymentType, ...] = ("serverless",)
CURRENCY = r"^[A-Z]{3}$"
PRICE = r"^[0-9]{1,9}(\.[0-9]{1,9})?$"
TERMS_VERSION = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$"


class PublisherCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    display_name: str = Field(default="", max_length=200)


class PublisherOut(BaseModel):
    id: str
    name: str
    display_name: str
    users: list[str] = []
    created_at: datetime


class PublisherUpdate(BaseModel):
    """A rename or a new display name; the fields left out keep their value."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
                             description="The new name (catalog models that name the publisher show it).")
    display_name: str | None = Field(default=None, max_length=200)


class PublisherUserAdd(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str = Field(min_length=1, max_length=63, description="User name or id.")


class PublisherKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str = Field(min_length=1, max_length=63, description="A user of the publisher.")
    name: str = Field(default="", max_length=64)


class PublisherKeyOut(BaseModel):
    """A publisher API key without its secret."""

    id: str
    name: str
    publisher_id: str
    user_id: str
    created_by: str | None
    created_at: datetime
    revoked_at: datetime | None


class PublisherKeyCreated(BaseModel):
    id: str
    name: str
    publisher_id: str
    user_id: str
    created_at: datetime
    key: str = Field(description="The secret, shown once.")


class TermsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(pattern=TERMS_VERSION)
    text: str = Field(min_length=1, max_length=100_000)


class OfferCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=100, description="A catalog-wide model (name or id).")
    model_version: str | None = Field(default=None, max_length=64)
    currency: str = Field(pattern=CURRENCY, description="ISO 4217 code, e.g. USD.")
    input_price: str = Field(pattern=PRICE, description="Price per 1,000 input tokens, a decimal string.")
    output_price: str = Field(pattern=PRICE, description="Price per 1,000 output tokens, a decimal string.")
    terms: TermsIn
    contact_sharing_required: bool = Field(default=True, strict=True)
    deployment_types: list[DeploymentType] = Field(default_factory=lambda: list(SERVERLESS_ONLY), min_length=1)


class OfferPrices(BaseModel):
    """New prices, in force for requests that start after the change (each request is charged at
    the prices in force when it started)."""

    # At least one price, in the document too.
    model_config = ConfigDict(extra="forbid", json_schema_extra={"anyOf": [
        {"required": ["input_price"], "properties": {"input_price": {"type": "string"}}},
        {"required": ["output_price"], "properties": {"output_price": {"type": "string"}}}]})
    input_price: str | None = Field(default=None, pattern=PRICE)
    output_price: str | None = Field(default=None, pattern=PRICE)


class TermsOut(BaseModel):
    version: str
    sha256: str
    created_at: datetime
    retired_at: datetime | None
    current: bool


class OfferOut(BaseModel):
    id: str
    model: str
    model_id: str
    publisher: str
    currency: str
    input_price: Decimal
    output_price: Decimal
    contact_sharing_required: bool
    deployment_types: list[str]
    state: Literal["active", "retired"]
    terms: TermsOut = Field(description="The current terms (their text: GET .../terms/{version}).")
    terms_versions: list[TermsOut]
    created_at: datetime
    retired_at: datetime | None


class TermsTextOut(BaseModel):
    version: str
    sha256: str
    text: str


class Contact(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    email: str = Field(min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    organization: str = Field(default="", max_length=200)


class SubscriptionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    offer: str = Field(min_length=1, max_length=40, description="The offer's id.")
    contact: Contact
    accept_terms_sha256: str = Field(pattern=r"^[0-9a-f]{64}$",
                                     description="The sha256 of the current terms, which you accept.")
    consent_to_share_contact: bool = Field(
        default=False, strict=True,
        description="Required where the offer requires contact sharing: the publisher receives this contact with "
                    "your usage volume and charges (never prompts or outputs).")


class SubscriptionOut(BaseModel):
    id: str
    offer: str
    model: str
    publisher: str
    state: Literal["active", "cancelled", "terms_retired"]
    terms_version: str
    terms_sha256: str
    contact: Contact
    consent_at: datetime | None
    consent_user_id: str | None
    accepted_at: datetime
    accepted_by: str
    created_at: datetime
    cancelled_at: datetime | None


# -- what a publisher sees: allow-lists ----------------------------------------------------------

class SharedContact(BaseModel):
    name: str
    email: str
    organization: str


class PublisherSubscriptionOut(BaseModel):
    """One subscription to the publisher's own offer: the contact only where consent was given."""

    subscription: str = Field(description="An opaque id of the subscription.")
    offer: str
    state: str
    terms_version: str
    contact: SharedContact | None
    created_at: datetime


class ReportRow(BaseModel):
    day: date
    subscription: str
    offer: str
    contact: SharedContact | None
    currency: str
    requests: int
    input_tokens: int
    output_tokens: int
    charges: Decimal


class ReportOut(BaseModel):
    publisher: str
    start: datetime = Field(alias="from")
    end: datetime = Field(alias="to")
    rows: list[ReportRow]

    model_config = ConfigDict(populate_by_name=True)
