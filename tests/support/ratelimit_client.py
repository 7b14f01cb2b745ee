"""A rate-limit client in a process of its own, for the tests of limits shared through Redis:
`python -m tests.support.ratelimit_client URL DEPLOYMENT RPM TPM COST START SECONDS TASKS`
waits until the wall-clock time START, then admits requests of COST tokens with TASKS concurrent
tasks for SECONDS, and prints how many were admitted and refused as JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from modelport.errors import RateLimited
from modelport.quotas.limiter import RateLimiter, storage_uri
from modelport.quotas.rates import RateLimits


async def hammer(limiter: RateLimiter, deployment: str, limits: RateLimits, cost: int, until: float,
                 tasks: int) -> tuple[int, int]:
    admitted = refused = 0

    async def one() -> None:
        nonlocal admitted, refused
        while time.time() < until:
            try:
                await limiter.admit(deployment, limits, cost)
                admitted += 1
            except RateLimited:
                refused += 1

    await asyncio.gather(*(one() for _ in range(tasks)))
    return admitted, refused


async def main(argv: list[str]) -> None:
    url, deployment, rpm, tpm, cost, start, seconds, tasks = argv
    limiter = RateLimiter(storage_uri(url))
    limits = RateLimits(int(rpm), int(tpm))
    await asyncio.sleep(max(0.0, float(start) - time.time()))
    admitted, refused = await hammer(limiter, deployment, limits, int(cost), float(start) + float(seconds),
                                     int(tasks))
    await limiter.close()
    print(json.dumps({"admitted": admitted, "refused": refused}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
