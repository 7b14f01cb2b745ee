"""Fine-tuned deployments follow their workspace key: suspended while it no longer unwraps their
weights (a disabled customer-managed key, within the datastore's key-cache time), resumed
without a redeploy once it does again. Only this watch adds or clears the `key_disabled` reason.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import select

from modelport.db.engine import Database
from modelport.db.tables import CatalogModel, Deployment
from modelport.deployments.lifecycle import DeploymentLifecycle
from modelport.errors import ModelportError
from modelport.finetuning.service import FinetunedWeights
from modelport.offload import run_blocking

log = logging.getLogger("modelport.deployments.key_watch")

#: How often fine-tuned deployments check that their workspace key still unwraps their weights.
KEY_CHECK_SECONDS = 5.0
REASON = "key_disabled"


class PrivateWeightsWatch:
    def __init__(self, db: Database, weights: FinetunedWeights, lifecycle: DeploymentLifecycle) -> None:
        self.db = db
        self.weights = weights
        self.lifecycle = lifecycle

    def _deployments(self) -> list[tuple[Deployment, CatalogModel]]:
        with self.db.session() as s:
            return list(s.execute(
                select(Deployment, CatalogModel).join(CatalogModel, CatalogModel.id == Deployment.model_id)
                .where(CatalogModel.source == "finetuned", Deployment.state.in_(("succeeded", "suspended")))
            ).tuples())

    async def check(self) -> None:
        """Once: suspend or resume every fine-tuned deployment as its key allows."""
        for dep, model in await run_blocking(self._deployments):
            try:
                await run_blocking(self.weights.check, model)
            except ModelportError as exc:
                if REASON not in (dep.suspensions or {}):
                    message = (
                        "The workspace key is disabled, so this fine-tuned model's weights cannot be decrypted "
                        "and it is not served; enable it again (modelport cmk enable) and it resumes."
                        if exc.code == "key_disabled"
                        else f"This fine-tuned model's weights cannot be read ({exc.code}); it is not served."
                    )
                    await self.lifecycle.suspend(dep.id, REASON, message)
            else:
                if REASON in (dep.suspensions or {}):
                    await self.lifecycle.resume(dep.id, REASON)

    async def run(self) -> None:
        """`check` a second after start, then every KEY_CHECK_SECONDS while the server runs."""
        delay = 1.0
        while True:
            await asyncio.sleep(delay)
            delay = KEY_CHECK_SECONDS
            try:
                await self.check()
            except Exception:
                log.exception("checking the keys of fine-tuned deployments failed")
