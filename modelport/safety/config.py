"""A deployment's content-filter configuration (stored with the deployment, edited by its owner).

Defaults are the safe ones: filtering on, every category blocked at `medium` for prompts and
completions, jailbreak detection on and annotating (reported in `content_filter_results`, not
blocked: on text written independently it flagged 8% of benign developer prompts, issue 15;
`jailbreak: {"enabled": true, "mode": "block"}` blocks), profanity off, buffered streaming. A
serverless deployment gets exactly these defaults (`ContentFilterConfig.default_for`).
Thresholds mean "filter at this severity or above": `low` is the strictest.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Threshold = Literal["low", "medium", "high"]
Mode = Literal["block", "annotate"]
StreamingMode = Literal["buffered", "asynchronous"]
DeploymentKind = Literal["serverless", "dedicated"]

BLOCKLIST_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class CategoryPolicy(BaseModel):
    """One harm category: a threshold for prompts, one for completions, and what to do on a hit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt_threshold: Threshold = "medium"
    completion_threshold: Threshold = "medium"
    mode: Mode = "block"


class DetectorPolicy(BaseModel):
    """A yes/no detector (jailbreak, profanity): on or off, and block or annotate."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    enabled: bool = True
    mode: Mode = "block"


class ContentFilterConfig(BaseModel):
    """Everything that decides what a deployment's content filter does.

    `blocklists` names the workspace's custom blocklists that apply (prompts and completions,
    always blocking). `backend` names a registered safety backend (entry-point group
    `modelport.safety_backends`); the default is the bundled fine-tuned MiniLM. The `llm-judge`
    backend asks `judge_deployment`, a chat deployment of the same workspace and geography, to
    judge each text (its own traffic is not screened again).
    """

    # The rule of `_judge` below, in the document: judge_deployment with the llm-judge backend only.
    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra={
        "if": {"properties": {"backend": {"const": "llm-judge"}}, "required": ["backend"]},
        "then": {"properties": {"judge_deployment": {"type": "string"}}, "required": ["judge_deployment"]},
        "else": {"properties": {"judge_deployment": {"type": "null"}}}})

    enabled: bool = Field(default=True, strict=True)
    hate: CategoryPolicy = Field(default_factory=CategoryPolicy)
    sexual: CategoryPolicy = Field(default_factory=CategoryPolicy)
    violence: CategoryPolicy = Field(default_factory=CategoryPolicy)
    self_harm: CategoryPolicy = Field(default_factory=CategoryPolicy)
    jailbreak: DetectorPolicy = Field(default_factory=lambda: DetectorPolicy(enabled=True, mode="annotate"))
    profanity: DetectorPolicy = Field(default_factory=lambda: DetectorPolicy(enabled=False, mode="annotate"))
    blocklists: tuple[Annotated[str, Field(pattern=BLOCKLIST_NAME)], ...] = Field(
        default=(), max_length=16, json_schema_extra={"uniqueItems": True})
    streaming: StreamingMode = "buffered"
    backend: str = Field(default="minilm", pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")
    judge_deployment: str | None = Field(default=None, min_length=1, max_length=128,
                                         description="With backend llm-judge: the chat deployment that judges.")

    @model_validator(mode="after")
    def _judge(self) -> ContentFilterConfig:
        if self.backend == "llm-judge" and self.judge_deployment is None:
            raise ValueError("the llm-judge backend needs judge_deployment: the name of a chat deployment of this "
                             "workspace in the same geography")
        if self.judge_deployment is not None and self.backend != "llm-judge":
            raise ValueError("judge_deployment is used only with backend llm-judge")
        return self

    @field_validator("blocklists")
    @classmethod
    def _names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        import re

        if len(names) > 16:
            raise ValueError("at most 16 blocklists per deployment")
        for name in names:
            if not re.match(BLOCKLIST_NAME, name):
                raise ValueError("a blocklist name is 1-64 letters, digits, '_', '.', '-'")
        if len(set(names)) != len(names):
            raise ValueError("a blocklist is named twice")
        return names

    def category(self, name: str) -> CategoryPolicy:
        return getattr(self, name)

    @classmethod
    def default_for(cls, kind: DeploymentKind) -> ContentFilterConfig:
        """The configuration a new deployment starts with: on, `medium`, blocking, for both kinds."""
        if kind not in ("serverless", "dedicated"):
            raise ValueError(f"unknown deployment kind {kind!r}")
        return cls()

    @classmethod
    def disabled(cls) -> ContentFilterConfig:
        return cls(enabled=False)
