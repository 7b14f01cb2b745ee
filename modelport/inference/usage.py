"""Usage of the gateway's requests: one event per request (counts and ids, never content, P1),
billed under its route's offer, and the token metrics. Writing is modelport/metering's job
(`MeterRecorder`: group commit off the request path); this only says what to write.
"""

from __future__ import annotations

from modelport.db.engine import Database
from modelport.inference.routing import Route
from modelport.metering.recorder import MeterRecorder, usage_row
from modelport.metrics import Metrics

# Usage statuses as the token metrics label them (an answer the filter cut was still answered).
METRIC_STATUS = {"filtered": "success"}


class UsageRecorder:
    def __init__(self, db: Database, metrics: Metrics) -> None:
        self.meter = MeterRecorder(db)
        self.metrics = metrics

    @staticmethod
    def row(route: Route, api: str, input_tokens: int, output_tokens: int, status: str) -> dict:
        """The usage event of one request of `route` (counts and ids only, never content)."""
        b = route.billing
        return usage_row(workspace_id=route.workspace_id, deployment_id=route.id, model_id=route.model_id, api=api,
                         input_tokens=input_tokens, output_tokens=output_tokens, status=status, offer_id=b.offer_id,
                         subscription_id=b.subscription_id, currency=b.currency, input_price=b.input_price,
                         output_price=b.output_price)

    def record(self, route: Route, api: str, input_tokens: int, output_tokens: int, status: str) -> None:
        """Queue a usage event without waiting for its commit."""
        self.meter.record(self.row(route, api, input_tokens, output_tokens, status))
        self.metrics.tokens(route.id, METRIC_STATUS.get(status, status), input_tokens, output_tokens)

    async def record_durable(self, route: Route, api: str, input_tokens: int, output_tokens: int,
                             status: str) -> None:
        """Queue a usage event and return once it is committed (before an answer's last byte)."""
        self.metrics.tokens(route.id, METRIC_STATUS.get(status, status), input_tokens, output_tokens)
        await self.meter.record_durable(self.row(route, api, input_tokens, output_tokens, status))

    def flush(self) -> None:
        """Return once every usage event queued so far is committed (blocks: call on a thread)."""
        self.meter.flush()
