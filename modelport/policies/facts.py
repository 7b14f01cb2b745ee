"""What a policy sees: the caller, a model, a deployment, as the Cedar entities of the schema.

The facts are frozen values built from rows (never from request text that was not validated),
so that they can key the engine's memory of decisions and parsed entities (engine.py): parsing
entities costs about as much as a decision, and they repeat from one request to the next.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

from modelport.db.tables import CatalogModel, Deployment
from modelport.identity.principal import Principal

#: Looseness of a threshold: a filter at `low` filters the most. "off": the category only annotates.
THRESHOLD_RANK = {"low": 1, "medium": 2, "high": 3, "off": 4}


@dataclass(frozen=True)
class UserFacts:
    id: str
    name: str
    role: str
    workspace: str
    platform_admin: bool

    @classmethod
    def of(cls, p: Principal) -> UserFacts:
        return cls(id=p.user_id, name=p.user_name, role=p.role.value if p.role else "none",
                   workspace=p.workspace_name, platform_admin=p.is_platform_admin)

    def entity(self) -> dict:
        return {"uid": {"type": "User", "id": self.id}, "parents": [],
                "attrs": {"name": self.name, "role": self.role, "workspace": self.workspace,
                          "platform_admin": self.platform_admin}}


@dataclass(frozen=True)
class ModelFacts:
    id: str
    name: str
    version: str
    publisher: str
    license: str
    format: str
    task: str
    source: str
    curated: bool
    scan_status: str
    sha256: str
    offer: str
    owner: str

    @classmethod
    def of(cls, m: CatalogModel, owner: str, offer: str = "") -> ModelFacts:
        """`owner`: "platform" for a catalog-wide model, else the owning workspace's name;
        `offer`: the id of the offer it is sold under, where the caller knows it ("" otherwise)."""
        return cls(id=m.id, name=m.name, version=m.version, publisher=m.publisher, license=m.license_spdx,
                   format=m.format, task=m.task, source=m.source, curated=bool(m.curated),
                   scan_status=m.scan_status, sha256=model_sha256([(f.path, f.sha256) for f in m.files]),
                   offer=offer, owner=owner)

    @classmethod
    def seen_by(cls, m: CatalogModel, actor: Principal, offer: str = "") -> ModelFacts:
        """A model visible to `actor`: catalog-wide, or private to the actor's workspace."""
        return cls.of(m, actor.workspace_name if m.owner_workspace_id else "platform", offer)

    def entity(self) -> dict:
        attrs = {k: v for k, v in self.__dict__.items() if k != "id"}
        return {"uid": {"type": "Model", "id": self.id}, "parents": [], "attrs": attrs}


def model_sha256(files: list[tuple[str, str]]) -> str:
    """A model's one digest: its file's sha256, or for several files the sha256 of their
    `path sha256` lines sorted by path (each line ending in a newline)."""
    if len(files) == 1:
        return files[0][1]
    lines = "".join(f"{path} {digest}\n" for path, digest in sorted(files))
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class FilterFacts:
    enabled: bool
    hate: str
    sexual: str
    violence: str
    self_harm: str
    backend: str = "minilm"  # the safety backend that screens (ContentFilterConfig.backend)
    judge_deployment: str = ""  # backend llm-judge: the chat deployment that judges; "" otherwise
    jailbreak: str = "annotate"  # block | annotate | off
    profanity: str = "off"  # block | annotate | off

    @classmethod
    def of(cls, config: dict) -> FilterFacts:
        """From a stored content-filter configuration (ContentFilterConfig's JSON); a key it lacks
        (a row stored before the key existed) has ContentFilterConfig's default."""
        def level(cat: str) -> str:
            c = config.get(cat) or {}
            if c.get("mode", "block") != "block":
                return "off"
            p, q = c.get("prompt_threshold", "medium"), c.get("completion_threshold", "medium")
            return max(p, q, key=THRESHOLD_RANK.__getitem__)

        def detector(name: str) -> str:
            d = config.get(name) or _DETECTOR_DEFAULTS[name]
            return str(d.get("mode", "block")) if d.get("enabled", True) else "off"

        return cls(enabled=bool(config.get("enabled", True)), hate=level("hate"), sexual=level("sexual"),
                   violence=level("violence"), self_harm=level("self_harm"),
                   backend=str(config.get("backend") or "minilm"),
                   judge_deployment=str(config.get("judge_deployment") or ""),
                   jailbreak=detector("jailbreak"), profanity=detector("profanity"))

    def record(self) -> dict:
        """The ContentFilter record of the schema (a copy: the caller may change it)."""
        return dict(self.fields)

    @cached_property
    def loosest(self) -> str:
        """The loosest of the four category thresholds (the record's `loosest`)."""
        return max((self.hate, self.sexual, self.violence, self.self_harm), key=THRESHOLD_RANK.__getitem__)

    @cached_property
    def fields(self) -> dict:
        """The record, made once (a policy decision reads it field by field); never change it."""
        return {"enabled": self.enabled, "hate": self.hate, "sexual": self.sexual, "violence": self.violence,
                "self_harm": self.self_harm, "loosest": self.loosest, "backend": self.backend,
                "judge_deployment": self.judge_deployment, "jailbreak": self.jailbreak, "profanity": self.profanity}


#: ContentFilterConfig's detector defaults, for a stored configuration without the key.
_DETECTOR_DEFAULTS = {"jailbreak": {"enabled": True, "mode": "annotate"},
                      "profanity": {"enabled": False, "mode": "annotate"}}


@dataclass(frozen=True)
class DeploymentFacts:
    id: str  # "new" for one being created
    name: str
    workspace: str
    model: ModelFacts
    type: str
    geography: str
    instances: int
    public_network_access: bool
    allowed_ranges: tuple[str, ...]
    content_filter: FilterFacts

    @classmethod
    def of(cls, d: Deployment, model: ModelFacts, workspace: str, *, instances: int | None = None,
           network: dict | None = None, content_filter: dict | None = None) -> DeploymentFacts:
        """The deployment `d`, or as it would be with the given changes."""
        net = network if network is not None else (d.network or {})
        return cls(id=d.id, name=d.name, workspace=workspace, model=model, type=d.type, geography=d.geography,
                   instances=instances if instances is not None else d.instances,
                   public_network_access=bool(net.get("public_access", True)),
                   allowed_ranges=tuple(net.get("allowed_ranges") or ()),
                   content_filter=FilterFacts.of(content_filter if content_filter is not None
                                                 else (d.content_filter or {})))

    def entity(self) -> dict:
        return {"uid": {"type": "Deployment", "id": self.id}, "parents": [],
                "attrs": {"name": self.name, "workspace": self.workspace,
                          "model": {"__entity": {"type": "Model", "id": self.model.id}},
                          "type": self.type, "geography": self.geography, "instances": self.instances,
                          "public_network_access": self.public_network_access,
                          "allowed_ranges": list(self.allowed_ranges),
                          "content_filter": self.content_filter.record()}}


Resource = ModelFacts | DeploymentFacts


def as_json(user: UserFacts, resource: Resource) -> dict:
    """The facts as the `policies test` answer shows them (what the policies saw)."""
    out: dict = {"principal": user.entity()["attrs"]}
    if isinstance(resource, ModelFacts):
        out["resource"] = {"type": "Model", **resource.entity()["attrs"]}
    else:
        attrs = resource.entity()["attrs"]
        attrs["model"] = resource.model.entity()["attrs"]
        out["resource"] = {"type": "Deployment", **attrs}
    return out
