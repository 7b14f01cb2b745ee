"""The one exception hierarchy of modelport.

    ModelportError                      base of everything we raise on purpose
    ├── UserError                       the caller can fix it; mapped to a 4xx answer
    │   ├── InvalidInput          400   a value is wrong; `field` names it, the value is never echoed
    │   ├── Unauthenticated       401   no key, an unknown key, a revoked or expired key
    │   ├── Forbidden             403   the key is valid but its role may not do this
    │   │   └── PolicyDenied      403   a governance policy forbids it; `details.policies` names them
    │   ├── NotFound              404   missing, or belongs to another workspace (never told apart)
    │   ├── Conflict              409   a duplicate name, a state that does not allow the action
    │   ├── PayloadTooLarge       413   a body over the configured limit
    │   ├── Unprocessable         422   the input parsed but is not a valid artifact (GGUF, dataset...)
    │   └── TooManyRequests       429   a bounded queue is full; `retry_after` in seconds
    │       └── RateLimited       429   a deployment's requests or tokens per minute are spent
    └── InternalError                   our side failed; mapped to 5xx, the message stays generic
        ├── ServiceUnavailable    503   a dependency (key provider, worker pool) is down
        └── IntegrityError        500   stored bytes do not match their recorded hash

Domain code raises these; it never raises HTTP exceptions. One handler per surface maps them to
the control-plane JSON shape, the OpenAI shape on /v1 and the Azure shape on /deployments.
Messages say what was wrong and what to do, and never contain user content (prompts, outputs,
keys, field values).
"""

from __future__ import annotations


class ModelportError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, field: str | None = None, details: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.details = details or {}


class UserError(ModelportError):
    status_code = 400
    code = "invalid_request"


class InvalidInput(UserError):
    status_code = 400
    code = "invalid_input"


class Unauthenticated(UserError):
    status_code = 401
    code = "unauthenticated"


class Forbidden(UserError):
    status_code = 403
    code = "forbidden"


class PolicyDenied(Forbidden):
    """A governance policy (modelport/policies) forbids the action: `details["policies"]` lists
    the ids of the policies that denied it, and nothing else of the request."""

    code = "policy_denied"

    def __init__(self, action: str, policy_ids: list[str]) -> None:
        super().__init__(
            f"Denied by policy {', '.join(policy_ids)}: this {action.replace('_', ' ')} is forbidden by the "
            "installation's or workspace's governance policies ('modelport policies show ID' says why).",
            details={"policies": policy_ids, "action": action})


class NotFound(UserError):
    status_code = 404
    code = "not_found"


class Conflict(UserError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(UserError):
    status_code = 413
    code = "payload_too_large"


class Unprocessable(UserError):
    status_code = 422
    code = "unprocessable"


class TooManyRequests(UserError):
    status_code = 429
    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after: int = 1, **kw) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class RateLimited(TooManyRequests):
    """A deployment's rate limit: the answer carries `retry-after` (seconds, rounded up),
    `retry-after-ms` and the x-ratelimit-* headers, which the official clients read."""

    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_ms: int, headers: dict[str, str], **kw) -> None:
        super().__init__(message, retry_after=max(1, -(-retry_after_ms // 1000)), **kw)
        self.retry_after_ms = retry_after_ms
        self.headers = headers


class InternalError(ModelportError):
    status_code = 500
    code = "internal_error"


class ServiceUnavailable(InternalError):
    status_code = 503
    code = "service_unavailable"


class IntegrityError(InternalError):
    status_code = 500
    code = "integrity_error"
