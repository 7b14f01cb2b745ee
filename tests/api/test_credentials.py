"""The one parser of the key a request sends (api/credentials.py), on any header value: a key
comes out trimmed and never empty, anything else is refused (401) or is no key at all."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelport.api.credentials import BEARER_FORMAT, api_key, bearer
from modelport.errors import Unauthenticated


@given(st.text(max_size=80))
def test_any_authorization_value_is_a_trimmed_key_or_a_401(value: str) -> None:
    try:
        key = bearer(value)
    except Unauthenticated as exc:
        assert exc.message == BEARER_FORMAT and exc.status_code == 401
        scheme, _, token = value.partition(" ")
        assert scheme.lower() != "bearer" or not token.strip()
        return
    if not value:
        assert key is None
        return
    assert key is not None and key == key.strip() and key
    assert value.lower().startswith("bearer ") and value.partition(" ")[2].strip() == key


@given(st.text(min_size=1, max_size=40).filter(lambda k: k.strip() == k and " " not in k))
def test_a_bearer_key_round_trips_whatever_the_schemes_case(key: str) -> None:
    for scheme in ("Bearer", "bearer", "BEARER"):
        assert bearer(f"{scheme} {key}") == key
        assert bearer(f"{scheme}   {key}  ") == key


@pytest.mark.parametrize("value", [None, ""])
def test_no_header_is_no_key(value: str | None) -> None:
    assert bearer(value) is None
    assert api_key({} if value is None else {"api-key": value}) is None


def test_azures_header_is_trimmed() -> None:
    assert api_key({"api-key": "  mpd_abc  "}) == "mpd_abc"
