"""Old names, kept while the request path (handlers.py, calls.py, responses.py) and
metering/budgets.py still import them; new code imports from where each now lives:

    Route, Billing          inference/routing.py
    worker_concurrency      inference/provisioning.py
    DeploymentManager       inference/gateway.py: Gateway (changes to deployments:
                            deployments/lifecycle.py: DeploymentLifecycle)
"""

from modelport.inference.gateway import Gateway as DeploymentManager
from modelport.inference.provisioning import worker_concurrency
from modelport.inference.routing import FREE, Billing, Route

__all__ = ["FREE", "Billing", "DeploymentManager", "Route", "worker_concurrency"]
