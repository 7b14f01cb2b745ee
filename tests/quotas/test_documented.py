"""The quota settings, routes and commands are documented where a user looks for them."""

from __future__ import annotations

from modelport.config import build_settings
from tests.support.server import ROOT


def test_every_quota_setting_is_in_the_readme_with_its_default() -> None:
    readme = (ROOT / "README.md").read_text()
    defaults = build_settings({})
    for name in ("serverless_requests_per_minute", "serverless_tokens_per_minute", "dedicated_requests_per_minute",
                 "dedicated_tokens_per_minute", "redis_url"):
        assert f"`MODELPORT_{name.upper()}`" in readme, name
        value = getattr(defaults, name)
        if value is not None:
            assert f"`{value}`" in readme, (name, value)


def test_the_routes_and_commands_are_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for text in ('{"rate_limits": {"requests_per_minute"', '{"rate_limit_caps"', "GET /metrics",
                 "deployments update assistant --rpm", "--rpm-cap", "retry-after-ms",
                 "x-ratelimit-remaining-tokens"):
        assert text in readme, text
