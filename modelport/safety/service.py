"""Content safety in the running platform: backends loaded once, per-deployment screeners,
workspace blocklists, the per-workspace bound on screening (`admission`), the standalone
analyze call, and counts of what the filters caught.

Nothing screened is stored or logged (P1): the counters hold deployment, direction, category
and a number, nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

from sqlalchemy import select

from modelport.audit import service as audit
from modelport.db.base import new_id
from modelport.db.engine import Database
from modelport.db.tables import Blocklist, ContentFilterCount, Deployment
from modelport.errors import InvalidInput, NotFound
from modelport.identity.principal import Principal
from modelport.metrics import Metrics
from modelport.offload import run_blocking
from modelport.safety import blocklists
from modelport.safety.admission import WorkspaceGate
from modelport.safety.backends import create_backend
from modelport.safety.backends.base import BackendSettings, SafetyBackend
from modelport.safety.backends.llm_judge import Complete, LLMJudgeBackend
from modelport.safety.blocklists import BlocklistSet
from modelport.safety.cache import DEFAULT_ENTRIES, AnalysisCache, CachedBackend
from modelport.safety.cascade import with_cascade
from modelport.safety.config import BLOCKLIST_NAME, ContentFilterConfig
from modelport.safety.screening import SafetyUnavailable, Screener, Verdict

log = logging.getLogger(__name__)

MAX_TERMS = 1000
MAX_PATTERNS = 100

#: (workspace id, judge deployment name, geography the judged text must stay in, or None) ->
#: an async callable that sends chat messages to that deployment, unscreened, and returns the answer
JudgeFactory = Callable[[str, str, str | None], Complete]


class SafetyService:
    """`screening_concurrency`/`screening_queue`: screenings one workspace runs at once / may queue
    (beyond: 429); `blocklist_budget_s`: time all of a deployment's blocklists get per text;
    `screening_cache_entries`: analyses each loaded backend keeps of texts it has classified, by
    keyed hash (safety/cache.py; 0: none); `screening_cascade`: the minilm backend behind the
    cheap first stage of safety/cascade.py (if that cannot be loaded, MiniLM alone screens);
    `backend_settings`: what every backend it loads is given (BackendSettings.from_settings)."""

    def __init__(self, db: Database, *, metrics: Metrics, screening_concurrency: int = 2, screening_queue: int = 16,
                 blocklist_budget_s: float = blocklists.DEFAULT_BUDGET_S,
                 screening_cache_entries: int = DEFAULT_ENTRIES, screening_cascade: bool = True,
                 backend_settings: BackendSettings | None = None) -> None:
        self.db = db
        self.screening_cascade = screening_cascade
        self.backend_settings = backend_settings or BackendSettings()
        self.metrics = metrics
        self.screening_cache_entries = screening_cache_entries
        self.gate = WorkspaceGate(screening_concurrency, screening_queue)
        self.blocklist_budget_s = blocklist_budget_s
        self._backends: dict[str, SafetyBackend] = {}
        self._backend_lock = asyncio.Lock()
        self._blocklists: dict[str, BlocklistSet] = {}
        self._counts: Counter[tuple[str, str, str, str]] = Counter()
        self._counts_lock = threading.Lock()
        self._judge_factory: JudgeFactory | None = None
        self._judges: dict[tuple[str, str, str | None], LLMJudgeBackend] = {}

    def set_judge_factory(self, factory: JudgeFactory) -> None:
        """How the llm-judge backend reaches chat deployments (the gateway wires its own calls in)."""
        self._judge_factory = factory
        self._judges.clear()

    # -- screeners ------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def admission(self, workspace_id: str) -> AsyncIterator[None]:
        """Hold one of the workspace's screening places (or wait for one; TooManyRequests beyond)."""
        async with self.gate.enter(workspace_id):
            yield

    async def backend(self, name: str) -> SafetyBackend:
        if name not in self._backends:
            async with self._backend_lock:
                if name not in self._backends:
                    try:
                        loaded = await run_blocking(create_backend, name, settings=self.backend_settings)
                        if self.screening_cascade:
                            loaded = await run_blocking(_cascaded, loaded)
                        self._backends[name] = CachedBackend(loaded, AnalysisCache(self.screening_cache_entries))
                    except Exception as exc:  # fail closed: no screening, no request
                        raise SafetyUnavailable(f"The content-filter backend '{name}' could not be loaded; "
                                                "requests to filtered deployments are refused.") from exc
        return self._backends[name]

    def judge(self, workspace_id: str, deployment: str, geography: str | None) -> LLMJudgeBackend:
        """The llm-judge backend asking `deployment` of `workspace_id` (one per judge and geography)."""
        if self._judge_factory is None:
            raise SafetyUnavailable("The llm-judge content-filter backend is not available in this process; "
                                    "requests to filtered deployments are refused.")
        key = (workspace_id, deployment, geography)
        if key not in self._judges:
            self._judges[key] = LLMJudgeBackend(self._judge_factory(workspace_id, deployment, geography))
        return self._judges[key]

    async def screener(self, workspace_id: str, config: ContentFilterConfig, geography: str | None = None) -> Screener:
        """A screener for one request of a deployment whose filter is on (the caller checks);
        `geography` is the deployment's, which an llm-judge must share."""
        lists = None
        if config.blocklists:
            # Cached per workspace; the database is read (in a thread) only after a change.
            lists = self._blocklists.get(workspace_id) or await run_blocking(self.blocklist_set, workspace_id)
        if config.judge_deployment is not None:
            backend: SafetyBackend = self.judge(workspace_id, config.judge_deployment, geography)
        else:
            backend = await self.backend(config.backend)
        try:
            return Screener(backend, config, lists, blocklist_budget_s=self.blocklist_budget_s)
        except InvalidInput as exc:  # a named blocklist was deleted or grew since: refuse, never screen less
            raise SafetyUnavailable(f"This deployment's content filter cannot be applied ({exc.message}); its owner "
                                    "must update the filter configuration. The request was not processed.") from exc

    async def analyze(self, actor: Principal, text: str, config: ContentFilterConfig | None) -> Verdict:
        actor.require("deployments.read")
        if not text.strip():
            raise InvalidInput("text is empty.", field="text")
        cfg = config or ContentFilterConfig()
        lists = await run_blocking(self.blocklist_set, actor.workspace_id) if cfg.blocklists else None
        if cfg.judge_deployment is not None:
            backend: SafetyBackend = self.judge(actor.workspace_id, cfg.judge_deployment, None)
        else:
            backend = await self.backend(cfg.backend)
        async with self.admission(actor.workspace_id):  # the same CPU as the gateway's screening
            return await Screener(backend, cfg, lists, blocklist_budget_s=self.blocklist_budget_s).screen_prompt(text)

    # -- counts ---------------------------------------------------------------------------
    def count_results(self, deployment_id: str, direction: str, filtered: tuple[str, ...],
                      detected: tuple[str, ...]) -> None:
        annotated = set(detected) - set(filtered)
        with self._counts_lock:
            for reason in filtered:
                self._counts[(deployment_id, direction, reason, "filtered")] += 1
            for reason in annotated:
                self._counts[(deployment_id, direction, reason, "annotated")] += 1
        # /metrics counts results, not categories (labels are the deployment and a status only).
        if filtered:
            self.metrics.filter_action(deployment_id, direction, "filtered")
        elif annotated:
            self.metrics.filter_action(deployment_id, direction, "annotated")

    def flush_counts(self) -> int:
        with self._counts_lock:
            batch, self._counts = self._counts, Counter()
        if not batch:
            return 0
        with self.db.session() as s:
            for (dep, direction, category, action), n in batch.items():
                row = s.scalar(select(ContentFilterCount).where(
                    ContentFilterCount.deployment_id == dep, ContentFilterCount.direction == direction,
                    ContentFilterCount.category == category, ContentFilterCount.action == action))
                if row is None:
                    s.add(ContentFilterCount(deployment_id=dep, direction=direction, category=category,
                                             action=action, count=n))
                else:
                    row.count += n
        return len(batch)

    def counts(self, deployment_id: str) -> list[dict[str, Any]]:
        self.flush_counts()
        with self.db.session() as s:
            rows = s.scalars(select(ContentFilterCount).where(ContentFilterCount.deployment_id == deployment_id)
                             .order_by(ContentFilterCount.direction, ContentFilterCount.category))
            return [{"direction": r.direction, "category": r.category, "action": r.action, "count": r.count}
                    for r in rows]

    # -- blocklists -----------------------------------------------------------------------
    def blocklist_set(self, workspace_id: str) -> BlocklistSet:
        cached = self._blocklists.get(workspace_id)
        if cached is None:
            with self.db.session() as s:
                rows = s.scalars(select(Blocklist).where(Blocklist.workspace_id == workspace_id)).all()
                cached = BlocklistSet.from_mapping({r.name: {"terms": r.terms, "patterns": r.patterns} for r in rows})
            self._blocklists[workspace_id] = cached
        return cached

    def check_filter(self, actor: Principal, config: ContentFilterConfig) -> set[str]:
        """Before a deployment's filter is saved: the caps of the blocklists it names together (400
        beyond), and the names of the workspace's blocklists (the caller refuses unknown ones)."""
        actor.require("safety.manage")
        with self.db.session() as s:
            rows = s.scalars(select(Blocklist).where(Blocklist.workspace_id == actor.workspace_id)).all()
            sizes = {r.name: _sizes(r.name, r.terms, r.patterns) for r in rows}
        if all(n in sizes for n in config.blocklists):
            blocklists.check_caps(sizes[n] for n in config.blocklists)
        return set(sizes)

    def list_blocklists(self, actor: Principal) -> list[Blocklist]:
        actor.require("deployments.read")
        with self.db.session() as s:
            return list(s.scalars(select(Blocklist).where(Blocklist.workspace_id == actor.workspace_id)
                                  .order_by(Blocklist.name)))

    def put_blocklist(self, actor: Principal, name: str, terms: list[str], patterns: list[str]) -> Blocklist:
        actor.require("safety.manage")
        if not re.fullmatch(BLOCKLIST_NAME, name):  # a name a deployment's filter could never refer to
            raise InvalidInput("A blocklist name is 1-64 letters, digits, '_', '.', '-'.", field="name")
        if len(terms) > MAX_TERMS or len(patterns) > MAX_PATTERNS:
            raise InvalidInput(f"A blocklist holds at most {MAX_TERMS} terms and {MAX_PATTERNS} patterns.",
                               field="terms")
        BlocklistSet.from_mapping({name: {"terms": terms, "patterns": patterns}})  # validates (names, regexes)
        with self.db.session() as s:
            self._check_deployments_naming(s, actor.workspace_id, _sizes(name, terms, patterns))
            row = s.scalar(select(Blocklist).where(Blocklist.workspace_id == actor.workspace_id,
                                                   Blocklist.name == name))
            if row is None:
                row = Blocklist(id=new_id("bl"), workspace_id=actor.workspace_id, name=name)
                s.add(row)
            row.terms, row.patterns = list(terms), list(patterns)
            audit.record(s, actor, "blocklist.put", resource_type="blocklist", resource_id=row.id,
                         detail={"terms": len(terms), "patterns": len(patterns)})
        self._blocklists.pop(actor.workspace_id, None)
        return row

    @staticmethod
    def _check_deployments_naming(s: Any, workspace_id: str, changed: blocklists.Blocklist) -> None:
        """A changed blocklist must keep every deployment that names it within the caps."""
        rows = s.scalars(select(Blocklist).where(Blocklist.workspace_id == workspace_id)).all()
        sizes = {r.name: _sizes(r.name, r.terms, r.patterns) for r in rows} | {changed.name: changed}
        for dep in s.scalars(select(Deployment).where(Deployment.workspace_id == workspace_id)):
            names = (dep.content_filter or {}).get("blocklists") or []
            if changed.name not in names:
                continue
            try:
                blocklists.check_caps(sizes[n] for n in names if n in sizes)
            except InvalidInput as exc:
                raise InvalidInput(f"Deployment '{dep.name}' names this blocklist, and with this change {exc.message}. "
                                   "Make the list smaller, or remove it from that deployment's content filter first.",
                                   field=exc.field) from exc

    def delete_blocklist(self, actor: Principal, name: str) -> None:
        actor.require("safety.manage")
        with self.db.session() as s:
            row = s.scalar(select(Blocklist).where(Blocklist.workspace_id == actor.workspace_id,
                                                   Blocklist.name == name))
            if row is None:
                raise NotFound("No blocklist of that name in this workspace.", field="name")
            s.delete(row)
            audit.record(s, actor, "blocklist.delete", resource_type="blocklist", resource_id=row.id)
        self._blocklists.pop(actor.workspace_id, None)


def _cascaded(backend: SafetyBackend) -> SafetyBackend:
    """`backend` behind the cascade's first stage; `backend` alone if that cannot be loaded (the
    first stage only saves work, so without it every text is classified: fail closed)."""
    try:
        return with_cascade(backend)
    except Exception:
        log.warning("the first-stage safety screen could not be loaded; %s screens every text", backend.name,
                    exc_info=True)
        return backend


def _sizes(name: str, terms: list[str], patterns: list[str]) -> blocklists.Blocklist:
    """A blocklist with its terms and patterns but not compiled: enough to check caps."""
    return blocklists.Blocklist(name=name, terms=tuple(t.strip() for t in terms if t.strip()), patterns=tuple(patterns))
