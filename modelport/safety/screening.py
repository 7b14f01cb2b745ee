"""Screening: apply a deployment's content-filter configuration to prompts and streamed outputs.

`Screener` combines a backend (severities, jailbreak, profanity), the configuration
(thresholds, block or annotate) and the workspace's blocklists into a `Verdict`, whose
`results` is the wire `content_filter_results` object: always every key, in one shape, on
every path (see `empty_results`). Both the backend and the blocklists see each text in its
screening form (`safety.text`: NFKC, without format characters), so a word hidden by a
zero-width character or written in fullwidth letters is screened as the word. Blocklists run
in a worker thread within one time budget per text. Any failure while screening (a backend
error, a blocklist past its budget) raises `SafetyUnavailable` (HTTP 503): the filter fails
closed, never open. Nothing screened is logged or kept (P1); a Verdict holds severities and
names, never text.

`StreamScreener` cuts a streamed completion into segments (a sentence end after MIN_CHARS,
or at most MAX_CHARS), screens each with the last CARRY_CHARS of the previous segment in
front (so a phrase split across two segments is still seen whole), and tells the gateway
what it may send:
- buffered (default): a segment's text is released only after it passed; the first filtered
  segment stops the stream and none of its text is released;
- asynchronous: text is released at once, segments are screened in background tasks, and
  the stream is cut as soon as one is found filtered.
A non-streamed answer is always screened as `buffered` (`Screener.stream(buffered=True)`):
nothing of it has been sent while it is screened, so none of a filtered segment ever is.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from modelport.errors import InvalidInput, ServiceUnavailable
from modelport.offload import run_blocking
from modelport.safety.backends.base import CATEGORIES, SEVERITIES, Analysis, SafetyBackend, severity_rank
from modelport.safety.blocklists import DEFAULT_BUDGET_S, BlocklistSet, BlocklistTimeout
from modelport.safety.config import ContentFilterConfig
from modelport.safety.text import screening_form

Direction = Literal["prompt", "completion"]

MIN_CHARS = 100
MAX_CHARS = 200
CARRY_CHARS = 60
_SENTENCE_END = re.compile(r"[.!?;:\n](?=\s|$)|\n")


class SafetyUnavailable(ServiceUnavailable):
    """Screening failed (backend error, blocklist timeout); the request is refused, not let through."""

    code = "content_filter_unavailable"


class ContentFiltered(InvalidInput):
    """A prompt was blocked. `details["content_filter_result"]` is the wire results object."""

    code = "content_filter"

    def __init__(self, verdict: Verdict) -> None:
        names = ", ".join(verdict.filtered_reasons)
        super().__init__(
            f"The prompt was filtered by the deployment's content filter ({names}). Change the prompt, or "
            "ask the deployment's owner to review its content-filter configuration.",
            field="prompt",
            details={"content_filter_result": verdict.results},
        )
        self.verdict = verdict


def empty_results() -> dict[str, Any]:
    """The results object of a text nothing was found in; every key of the stable schema."""
    out: dict[str, Any] = {c: {"filtered": False, "severity": "safe"} for c in CATEGORIES}
    out["jailbreak"] = {"filtered": False, "detected": False}
    out["profanity"] = {"filtered": False, "detected": False}
    out["custom_blocklists"] = {"filtered": False, "details": []}
    return out


@dataclass(frozen=True)
class Verdict:
    """The outcome of screening one text (or one segment). `results` is the wire object."""

    filtered: bool
    results: dict[str, Any]
    #: what caused the block, for counts per deployment and category: category names,
    #: "jailbreak", "profanity", "custom_blocklists"; empty when not filtered
    filtered_reasons: tuple[str, ...] = ()
    #: everything that hit, blocking or annotated (for counts of annotations)
    detected: tuple[str, ...] = field(default=())


def error_body(verdict: Verdict, *, param: str = "prompt") -> dict[str, Any]:
    """The HTTP 400 body for a blocked prompt, in the Azure shape (`content_filter`, with the
    per-category `content_filter_result` under `innererror`), the same on both inference APIs."""
    return {
        "error": {
            "code": "content_filter",
            "message": ContentFiltered(verdict).message,
            "param": param,
            "status": 400,
            "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": verdict.results},
        }
    }


class Screener:
    """Screens texts for one deployment. Cheap to build; the backend holds the model.

    Raises InvalidInput when the configuration names a blocklist that does not exist, or
    blocklists that together exceed a deployment's caps (`BlocklistSet.check_caps`)."""

    def __init__(self, backend: SafetyBackend, config: ContentFilterConfig,
                 blocklists: BlocklistSet | None = None, *, blocklist_budget_s: float = DEFAULT_BUDGET_S) -> None:
        self.backend = backend
        self.config = config
        self.blocklists = blocklists or BlocklistSet()
        self.blocklist_budget_s = blocklist_budget_s
        self.blocklists.check_caps(config.blocklists)

    def needed(self, direction: Direction) -> frozenset[str]:
        """What a verdict of this configuration in `direction` depends on: every category (its
        severity is reported even when only annotated), `<category>@low` where a category's
        threshold is `low`, jailbreak (prompts, where enabled) and profanity (where enabled). A
        backend that answers some texts from a cheaper first stage (safety/cascade.py) is told
        this, so that it vouches for no more than it checked."""
        out: set[str] = set(CATEGORIES)
        for cat in CATEGORIES:
            policy = self.config.category(cat)
            threshold = policy.prompt_threshold if direction == "prompt" else policy.completion_threshold
            if threshold == "low":
                out.add(f"{cat}@low")
        if direction == "prompt" and self.config.jailbreak.enabled:
            out.add("jailbreak")
        if self.config.profanity.enabled:
            out.add("profanity")
        return frozenset(out)

    async def _analyze(self, texts: list[str], direction: Direction = "prompt") -> list[Analysis]:
        need = self.needed(direction)
        try:
            analyze_for = getattr(self.backend, "analyze_for", None)
            analyses = await (analyze_for(texts, need) if analyze_for is not None else self.backend.analyze(texts))
        except SafetyUnavailable:  # already says what is unavailable (e.g. the llm-judge's deployment)
            raise
        except Exception as exc:  # any failure of the backend: fail closed
            raise SafetyUnavailable(
                "Content screening is unavailable, so the request was not processed. Retry later; if it "
                "persists, the operator should check the safety backend.",
            ) from exc
        if len(analyses) != len(texts):
            raise SafetyUnavailable("Content screening returned an incomplete answer; the request was not processed.")
        if any(a.covers is not None and not need <= a.covers for a in analyses):
            raise SafetyUnavailable("Content screening answered less than this deployment's filter needs; the "
                                    "request was not processed.")
        return analyses

    def _match_all(self, texts: list[str]) -> list[list[str]]:
        """Blocklist hits of each text, each within its own time budget (CPU work: runs in a thread)."""
        names, budget = self.config.blocklists, self.blocklist_budget_s
        return [self.blocklists.match(t, names, budget) for t in texts]

    async def _blocklist_hits(self, texts: list[str]) -> list[list[str]]:
        if not self.config.blocklists:
            return [[] for _ in texts]
        try:
            return await run_blocking(self._match_all, texts)
        except BlocklistTimeout as exc:
            raise SafetyUnavailable(
                "The deployment's custom blocklists did not finish within their time budget on this text, so the "
                "request was not processed. The workspace's owner should simplify the blocklists' regular expressions."
            ) from exc
        except Exception as exc:
            raise SafetyUnavailable(
                "A custom blocklist could not be evaluated; the request was not processed."
            ) from exc

    def verdict(self, analysis: Analysis, hits: list[str], direction: Direction) -> Verdict:
        """Apply thresholds and modes to one analysis (pure; exposed for tests and the gateway)."""
        cfg = self.config
        results = empty_results()
        reasons: list[str] = []
        detected: list[str] = []
        for cat in CATEGORIES:
            policy = cfg.category(cat)
            severity = analysis.severities[cat]
            threshold = policy.prompt_threshold if direction == "prompt" else policy.completion_threshold
            hit = severity_rank(severity) >= severity_rank(threshold)
            blocked = hit and policy.mode == "block"
            results[cat] = {"filtered": blocked, "severity": severity}
            detected += [cat] if hit else []
            reasons += [cat] if blocked else []
        for name, flag, applies in (
            ("jailbreak", analysis.jailbreak, direction == "prompt"),
            ("profanity", analysis.profanity, True),
        ):
            policy = getattr(cfg, name)
            found = bool(flag and policy.enabled and applies)
            blocked = found and policy.mode == "block"
            results[name] = {"filtered": blocked, "detected": found}
            detected += [name] if found else []
            reasons += [name] if blocked else []
        if hits:
            results["custom_blocklists"] = {"filtered": True, "details": [{"id": h, "filtered": True} for h in hits]}
            detected.append("custom_blocklists")
            reasons.append("custom_blocklists")
        return Verdict(filtered=bool(reasons), results=results, filtered_reasons=tuple(reasons),
                       detected=tuple(detected))

    async def screen(self, texts: list[str], direction: Direction) -> list[Verdict]:
        """Screen a batch of texts (one backend call) in their screening form. With filtering off,
        every verdict is empty."""
        if not self.config.enabled:
            return [Verdict(filtered=False, results=empty_results()) for _ in texts]
        forms = [screening_form(t) for t in texts]
        analyses = await self._analyze(forms, direction)
        hits = await self._blocklist_hits(forms)
        return [self.verdict(a, h, direction) for a, h in zip(analyses, hits, strict=True)]

    async def screen_prompt(self, text: str) -> Verdict:
        """Screen a prompt (for chat: `inference.filtering.prompt_text` of the messages)."""
        return (await self.screen([text], "prompt"))[0]

    async def screen_completion(self, text: str) -> Verdict:
        return (await self.screen([text], "completion"))[0]

    def stream(self, *, buffered: bool | None = None) -> StreamScreener:
        """A stream screener; `buffered` overrides the configured streaming mode (non-streamed answers)."""
        return StreamScreener(self, buffered=buffered)


def merge_results(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Combine two results objects: highest severity, any filtered, any detected, union of blocklists."""
    out = empty_results()
    for cat in CATEGORIES:
        sev = max(a[cat]["severity"], b[cat]["severity"], key=SEVERITIES.index)
        out[cat] = {"filtered": a[cat]["filtered"] or b[cat]["filtered"], "severity": sev}
    for name in ("jailbreak", "profanity"):
        out[name] = {k: a[name][k] or b[name][k] for k in ("filtered", "detected")}
    details = {d["id"]: d for d in a["custom_blocklists"]["details"] + b["custom_blocklists"]["details"]}
    out["custom_blocklists"] = {
        "filtered": a["custom_blocklists"]["filtered"] or b["custom_blocklists"]["filtered"],
        "details": [details[k] for k in sorted(details)],
    }
    return out


@dataclass
class StreamStep:
    """What the gateway does after feeding a delta: send `text` (may be ""), then stop if `stop`."""

    text: str = ""
    stop: bool = False


def split_segment(pending: str, final: bool) -> int:
    """Where the next segment ends in `pending` (0 = not yet): a sentence end past MIN_CHARS, a
    space before MAX_CHARS, or MAX_CHARS; everything when the stream is final."""
    if final:
        return len(pending)
    if len(pending) < MIN_CHARS:
        return 0
    for m in _SENTENCE_END.finditer(pending, MIN_CHARS - 1):
        if m.end() <= MAX_CHARS:
            return m.end()
        break
    if len(pending) < MAX_CHARS:
        return 0
    space = pending.rfind(" ", MIN_CHARS, MAX_CHARS)
    return space + 1 if space > 0 else MAX_CHARS


class StreamScreener:
    """Segment-by-segment screening of one streamed completion (one choice)."""

    def __init__(self, screener: Screener, *, buffered: bool | None = None) -> None:
        self.screener = screener
        self.buffered = screener.config.streaming == "buffered" if buffered is None else buffered
        self._pending = ""
        self._carry = ""
        self._results = empty_results()
        self._stopped = False
        self._tasks: list[asyncio.Task[Verdict]] = []
        self.segments = 0

    @property
    def filtered(self) -> bool:
        """True once a segment was filtered: the choice ends with finish_reason "content_filter"."""
        return self._stopped

    def results(self) -> dict[str, Any]:
        """The choice's content_filter_results: every screened segment merged."""
        return self._results

    def _window(self, segment: str) -> str:
        """The text screened for a segment: the carry-over from the previous one, then the segment."""
        window = self._carry + segment
        self._carry = window[-CARRY_CHARS:]
        self.segments += 1
        return window

    def _take(self, verdict: Verdict) -> None:
        self._results = merge_results(self._results, verdict.results)
        if verdict.filtered:
            self._stopped = True

    async def _drain_done(self) -> None:
        for task in [t for t in self._tasks if t.done()]:
            self._tasks.remove(task)
            self._take(task.result())  # re-raises SafetyUnavailable: fail closed

    async def feed(self, delta: str, *, final: bool = False) -> StreamStep:
        """Add generated text; `final=True` with the last delta (or "") flushes the remainder."""
        if self._stopped or not self.screener.config.enabled:
            return StreamStep(text="" if self._stopped else delta, stop=self._stopped)
        self._pending += delta
        if not self.buffered:
            return await self._feed_async(delta, final)
        released: list[str] = []
        while self._pending:
            cut = split_segment(self._pending, final)
            if cut == 0:
                break
            segment, self._pending = self._pending[:cut], self._pending[cut:]
            verdict = await self.screener.screen_completion(self._window(segment))
            self._take(verdict)
            if verdict.filtered:
                self._pending = ""
                return StreamStep(text="".join(released), stop=True)
            released.append(segment)
        return StreamStep(text="".join(released))

    async def _feed_async(self, delta: str, final: bool) -> StreamStep:
        await self._drain_done()
        if self._stopped:
            return StreamStep(stop=True)
        while self._pending:
            cut = split_segment(self._pending, final)
            if cut == 0:
                break
            segment, self._pending = self._pending[:cut], self._pending[cut:]
            self._tasks.append(asyncio.ensure_future(self.screener.screen_completion(self._window(segment))))
        if final:
            results = await asyncio.gather(*self._tasks)
            self._tasks.clear()
            for verdict in results:
                self._take(verdict)
            return StreamStep(text="" if self._stopped else delta, stop=self._stopped)
        return StreamStep(text=delta)

    async def finish(self) -> StreamStep:
        """End of generation: screen what is left. Returns any last text to send and whether to stop."""
        return await self.feed("", final=True)

    async def aclose(self) -> None:
        """Cancel background screening (client went away); nothing is kept."""
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        self._pending = ""
        self._carry = ""
