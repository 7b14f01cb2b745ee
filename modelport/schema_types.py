"""Field types of the wire schemas whose validation is what the OpenAPI document says.

pydantic's lax mode takes more than JSON Schema allows: `true` for an integer, `"1"` or `1` for a
boolean. A client generated from the document, and a validator, would call such a request
invalid while the server takes it. `JsonInt` is an integer as JSON Schema has it (1 and 1.0,
never a boolean or a string); a boolean field takes `Field(strict=True)`.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator


def _json_int(value: Any) -> Any:
    if isinstance(value, bool | str):
        raise ValueError("must be a JSON integer")
    return value


JsonInt = Annotated[int, BeforeValidator(_json_int)]
