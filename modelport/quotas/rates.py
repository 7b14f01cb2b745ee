"""A deployment's rate limits: the platform default of its type, the platform admin's caps
(per deployment, default: the platform default) and the owner's own limits (at most the caps).

Stored on the deployment row as two JSON objects, `rate_limit_caps` and `rate_limits`, each
{"requests_per_minute": int | null, "tokens_per_minute": int | null}; null means "the level
above": the owner's null is the cap, the cap's null is the platform default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from modelport.config import Settings

# Large enough for any real deployment, small enough that a typo (an extra zero or ten) is caught.
MAX_REQUESTS_PER_MINUTE = 10_000_000
MAX_TOKENS_PER_MINUTE = 10_000_000_000

RequestsPerMinute = Annotated[int, Field(strict=True, ge=1, le=MAX_REQUESTS_PER_MINUTE)]
TokensPerMinute = Annotated[int, Field(strict=True, ge=1, le=MAX_TOKENS_PER_MINUTE)]
FIELDS = ("requests_per_minute", "tokens_per_minute")


class RateLimitsIn(BaseModel):
    """A change of limits or caps: the fields sent are set (null: back to the level above); the
    fields left out keep their value."""

    model_config = ConfigDict(extra="forbid")
    requests_per_minute: RequestsPerMinute | None = Field(
        default=None, description="Requests admitted per minute, evaluated over 10-second windows.")
    tokens_per_minute: TokensPerMinute | None = Field(
        default=None, description="Tokens admitted per minute, charged at admission: prompt estimate + max_tokens.")


@dataclass(frozen=True)
class RateLimits:
    requests_per_minute: int
    tokens_per_minute: int

    def as_dict(self) -> dict[str, int]:
        return {"requests_per_minute": self.requests_per_minute, "tokens_per_minute": self.tokens_per_minute}


def platform_default(settings: Settings, deployment_type: str) -> RateLimits:
    if deployment_type == "dedicated":
        return RateLimits(settings.dedicated_requests_per_minute, settings.dedicated_tokens_per_minute)
    return RateLimits(settings.serverless_requests_per_minute, settings.serverless_tokens_per_minute)


def caps_of(settings: Settings, deployment_type: str, stored_caps: dict[str, Any] | None) -> RateLimits:
    default = platform_default(settings, deployment_type)
    caps = stored_caps or {}
    return RateLimits(caps.get("requests_per_minute") or default.requests_per_minute,
                      caps.get("tokens_per_minute") or default.tokens_per_minute)


def effective(settings: Settings, deployment_type: str, stored_caps: dict[str, Any] | None,
              stored_limits: dict[str, Any] | None) -> RateLimits:
    """What the gateway enforces: the owner's limit where set, never above the cap."""
    caps = caps_of(settings, deployment_type, stored_caps)
    own = stored_limits or {}
    return RateLimits(min(own.get("requests_per_minute") or caps.requests_per_minute, caps.requests_per_minute),
                      min(own.get("tokens_per_minute") or caps.tokens_per_minute, caps.tokens_per_minute))


def merged(stored: dict[str, Any] | None, change: RateLimitsIn) -> dict[str, int | None]:
    """`stored` with the fields that `change` sets."""
    out: dict[str, int | None] = {f: (stored or {}).get(f) for f in FIELDS}
    for f in change.model_fields_set:
        out[f] = getattr(change, f)
    return out
