"""The metrics of one server (its own registry: several apps in one process never mix counts).

    modelport_requests_total{deployment, status}            inference answers by HTTP status
    modelport_request_duration_seconds{deployment, status}  until the last byte (streams included)
    modelport_input_tokens_total{deployment, status}        prompt tokens the workers counted, by outcome
    modelport_output_tokens_total{deployment, status}       completion tokens, by outcome
    modelport_throttled_requests_total{deployment, status}  429s at admission: status `requests` | `tokens`
    modelport_content_filter_actions_total{deployment, status}  `prompt_filtered`, `completion_filtered`,
                                                            `prompt_annotated`, `completion_annotated`
    modelport_queue_depth{deployment}                       requests waiting for a worker, at scrape time

`deployment` is the deployment id (`dep_...`), or `none` for a request refused before any
deployment was known (no key, a wrong name).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from modelport.errors import RateLimited
from modelport.identity.principal import Principal

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
NO_DEPLOYMENT = "none"
LABELS = ("deployment", "status")
# Gateway answers take a millisecond; generations, seconds to minutes.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class _QueueDepth(Collector):
    def __init__(self, depths: Callable[[], Iterable[tuple[str, int]]]) -> None:
        self.depths = depths

    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily("modelport_queue_depth", "Requests waiting for a worker, per deployment.",
                              labels=["deployment"])
        for deployment, depth in self.depths():
            g.add_metric([deployment], depth)
        yield g


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("modelport_requests", "Inference answers, by deployment and HTTP status.", LABELS,
                                registry=r)
        self.duration = Histogram("modelport_request_duration_seconds", "Time from a request's arrival to its "
                                  "answer's last byte.", LABELS, buckets=BUCKETS, registry=r)
        self.input_tokens = Counter("modelport_input_tokens", "Prompt tokens counted by the workers, by outcome.",
                                    LABELS, registry=r)
        self.output_tokens = Counter("modelport_output_tokens", "Completion tokens generated, by outcome.", LABELS,
                                     registry=r)
        self.throttles = Counter("modelport_throttled_requests", "Requests refused (429) by a deployment's "
                                 "requests or tokens per minute.", LABELS, registry=r)
        self.filter_actions = Counter("modelport_content_filter_actions", "Content-filter results that filtered "
                                      "or annotated a prompt or a completion.", LABELS, registry=r)
        # Children by labels: `labels()` costs more than the increment itself on the request path.
        self._children: dict[tuple[int, str, str], Any] = {}

    def watch_queues(self, depths: Callable[[], Iterable[tuple[str, int]]]) -> None:
        self.registry.register(_QueueDepth(depths))

    def _child(self, metric: Any, deployment: str, status: str) -> Any:
        key = (id(metric), deployment, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(deployment, status)
        return child

    # -- the request path -------------------------------------------------------------------

    def observe_answer(self, deployment_id: str | None, status: int, seconds: float) -> None:
        dep, st = deployment_id or NO_DEPLOYMENT, str(status)
        self._child(self.requests, dep, st).inc()
        self._child(self.duration, dep, st).observe(seconds)

    def tokens(self, deployment_id: str, outcome: str, prompt_tokens: int, completion_tokens: int) -> None:
        if prompt_tokens:
            self._child(self.input_tokens, deployment_id, outcome).inc(prompt_tokens)
        if completion_tokens:
            self._child(self.output_tokens, deployment_id, outcome).inc(completion_tokens)

    def throttled(self, deployment_id: str, exc: BaseException) -> None:
        if isinstance(exc, RateLimited):
            self._child(self.throttles, deployment_id, str(exc.details.get("limit", "requests"))).inc()

    def filter_action(self, deployment_id: str, direction: str, action: str, count: int = 1) -> None:
        self._child(self.filter_actions, deployment_id, f"{direction}_{action}").inc(count)

    def scrape(self, actor: Principal) -> bytes:
        """The exposition text, for platform admins' keys only."""
        actor.require("platform.metrics")
        return generate_latest(self.registry)
