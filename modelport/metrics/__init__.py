"""Operational metrics in the Prometheus format (`GET /metrics`, platform admins only).

Labels are the deployment's id and a status, nothing else: no workspace, user, key, model
name, prompt or output ever becomes a label or a value (a test scrapes after canary traffic).
"""

from modelport.metrics.registry import Metrics

__all__ = ["Metrics"]
