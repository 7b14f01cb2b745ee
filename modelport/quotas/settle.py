"""Tokens per minute made exact once a request's usage is known.

At admission a request is charged an estimate (quotas/estimate.py): its prompt from its length
and the completion it asks for, `max_tokens` times `n`, or UNBOUNDED_COMPLETION tokens when it
sets no `max_tokens`, although it may then generate until the model's context is full. A prompt
whose text is denser than the estimate (few bytes a token) is under-estimated too. So when the
request's usage event is recorded, whatever it used beyond its estimate is charged to the same
tokens-per-minute window: every request ends up charged max(estimate, usage) tokens. What was
estimated and not used stays charged, as Azure OpenAI does (the estimate is what admission
promised to hold); it is never refunded.

The admission and the usage meet through a context variable set in the request's task: the
handler's tasks inherit it, and a usage event of another deployment recorded in the same request
(the content filter's judge) does not touch it. Each admission is settled at most once.
"""

from __future__ import annotations

import asyncio
import logging
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modelport.quotas.rates import RateLimits

if TYPE_CHECKING:
    from modelport.quotas.limiter import RateLimiter

log = logging.getLogger("modelport.quotas")

#: The usage label of the content filter's judge calls, which are never counted per minute.
JUDGE_API = "content_filter.judge"


@dataclass
class Admission:
    """What one admitted request was charged for tokens."""

    limiter: RateLimiter
    deployment_id: str
    limits: RateLimits
    estimate: int
    settled: bool = False


_admitted: ContextVar[Admission | None] = ContextVar("modelport_tpm_admission", default=None)
_tasks: set[asyncio.Task] = set()  # charges in flight (a task nobody references may vanish)


def admitted(limiter: RateLimiter, deployment_id: str, limits: RateLimits, estimate: int) -> None:
    """Remember, for this request, the tokens its admission charged."""
    _admitted.set(Admission(limiter, deployment_id, limits, estimate))


def settle(row: dict[str, Any]) -> None:
    """A usage event was recorded: charge its tokens beyond the admission's estimate (once)."""
    a = _admitted.get()
    if a is None or a.settled or a.deployment_id != row["deployment_id"] or row.get("api") == JUDGE_API:
        return
    a.settled = True
    extra = row["input_tokens"] + row["output_tokens"] - a.estimate
    if extra <= 0:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # recorded outside the event loop: nothing here records that way
        log.error("a usage event was recorded outside the event loop; its tokens beyond the estimate are not "
                  "charged to tokens per minute")
        return
    task = loop.create_task(_charge(a, extra))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def _charge(a: Admission, extra: int) -> None:
    try:
        await a.limiter.charge(a.deployment_id, a.limits, extra)
    except Exception:  # the store is down: the next admissions fail closed on it anyway
        log.exception("could not charge tokens beyond the estimate to tokens per minute")


async def drain() -> None:
    """Wait for the charges in flight (tests, shutdown)."""
    while _tasks:
        await asyncio.gather(*list(_tasks), return_exceptions=True)
