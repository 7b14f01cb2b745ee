"""Admission of an inference request, in one fixed order that later work plugs into:

1. authentication                 401   calls.authenticate (routes.py)
2. network settings               403   calls.check_client, before the body is read where the
                                        deployment is known (the URL or a deployment key)
   ... the body is read and validated here (400): an invalid request spends no quota ...
3. budget                         403   the workspace's monthly budget (`budget_exhausted`);
                                        its check is called first in `admit`, before step 4
4. requests and tokens per minute 429   `check_rate_limits` (quotas/limiter.py)
5. per-workspace caps             429   prompts screened at once per workspace (safety/admission.py);
                                        requests of one workspace in one pool, running and waiting
                                        (`pool_requests_per_workspace`, inference/scheduler.py)
6. the fair queue                 429   the deployment's bounded queue in its workspace's queue of
                                        the pool, then a slot: each workspace holds at most its
                                        share of a shared pool's slots, a freed slot goes to the
                                        waiting workspace holding fewest (inference/scheduler.py)

Steps 5 and 6 follow in the handler (screening, then calls.generate). Every answer to a request
that passed step 2 carries the deployment's x-ratelimit-* headers (`answer`): as charged at
step 4, or, for a request refused before it (a bad body), what is left, charged nothing; a
refusal at step 4 carries them with `retry-after` and `retry-after-ms`. Answers refused at steps
1 and 2 carry none: a caller outside the network settings learns nothing of the traffic.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

from modelport.errors import ModelportError
from modelport.inference.routing import Route
from modelport.quotas.limiter import Decision

#: Where an admitted request keeps its x-ratelimit-* headers (the ASGI scope) until its answer.
HEADERS = "modelport.ratelimit"
#: Where a request keeps its deployment once it passed the network settings (step 2).
ALLOWED = "modelport.allowed"


def allowed(request: Request, route: Route) -> None:
    """The request passed steps 1 and 2 for `route`: its answer may carry the rate-limit headers."""
    request.scope[ALLOWED] = route


async def admit(request: Request, route: Route, tokens: int) -> None:
    """Steps 3 and 4 for one parsed request whose admission estimate is `tokens`."""
    # Step 3, the workspace budget, ran in the route before the body was read (calls.admit_budget).
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


async def answer(request: Request, response: Response) -> Response:
    """`response` with the x-ratelimit-* headers: those of the request's admission, or, for a
    request that passed the network settings but was not admitted, the deployment's current ones."""
    headers = request.scope.get(HEADERS)
    route: Route | None = request.scope.get(ALLOWED)
    if headers is None and route is not None and "x-ratelimit-limit-requests" not in response.headers:
        try:
            headers = (await request.app.state.services.rate_limiter.peek(route.id, route.rate_limits)).headers()
        except ModelportError:
            headers = None  # the answer goes out as it is; the store's trouble shows on the next admission
    if headers:
        response.headers.update(headers)
    return response
