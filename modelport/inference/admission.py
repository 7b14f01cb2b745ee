"""Admission of an inference request, in one fixed order that later work plugs into:

1. authentication                 401   calls.authenticate (routes.py)
2. network settings               403   calls.check_client, before the body is read where the
                                        deployment is known (the URL or a deployment key)
   ... the body is read and validated here (400): an invalid request spends no quota ...
3. budget                         403   the workspace's monthly budget (`budget_exhausted`);
                                        its check is called first in `admit`, before step 4
4. requests and tokens per minute 429   `check_rate_limits` (quotas/limiter.py)
5. per-workspace caps             429   prompts screened at once per workspace (safety/admission.py)
6. the fair queue                 429   the deployment's bounded queue in its pool, then a slot

Steps 5 and 6 follow in the handler (screening, then calls.generate). Every answer to a request
that passed step 4 carries the deployment's x-ratelimit-* headers (`ratelimit_headers`), a
refusal at step 4 carries them too, with `retry-after` and `retry-after-ms`.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

from modelport.inference.manager import Route
from modelport.quotas.limiter import Decision

#: Where an admitted request keeps its x-ratelimit-* headers (the ASGI scope) until its answer.
HEADERS = "modelport.ratelimit"


async def admit(request: Request, route: Route, tokens: int) -> None:
    """Steps 3 and 4 for one parsed request whose admission estimate is `tokens`."""
    # Step 3, the workspace budget, is called here, before the rate limits.
    await check_rate_limits(request, route, tokens)


async def check_rate_limits(request: Request, route: Route, tokens: int) -> Decision:
    """Charge one request and `tokens` tokens to the deployment's limits, or raise RateLimited (429)."""
    services = request.app.state.services
    try:
        decision = await services.rate_limiter.admit(route.id, route.rate_limits, tokens)
    except Exception as exc:
        services.metrics.throttled(route.id, exc)
        raise
    request.scope[HEADERS] = decision.headers()
    return decision


def with_ratelimit_headers(request: Request, response: Response) -> Response:
    """The answer of an admitted request, with the x-ratelimit-* headers of its admission."""
    headers = request.scope.get(HEADERS)
    if headers:
        response.headers.update(headers)
    return response
