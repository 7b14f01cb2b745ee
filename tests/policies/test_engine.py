"""The policy compiler and the decision on a real metadata store (SQLite): what is refused when
saved, what a decision sees, and that a decision never sees a half-updated set."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from modelport.db import migrate
from modelport.db.engine import Database
from modelport.db.tables import AuditEvent, Policy
from modelport.errors import InvalidInput, PolicyDenied
from modelport.identity.principal import Principal
from modelport.identity.roles import Role
from modelport.policies import compiler
from modelport.policies.engine import PolicyEngine
from modelport.policies.facts import DeploymentFacts, FilterFacts, ModelFacts, UserFacts, model_sha256

ROOT = Path(__file__).resolve().parents[2]

MODEL = ModelFacts(id="mdl_1", name="SmolLM2-135M-Instruct", version="1", publisher="HuggingFaceTB",
                   license="Apache-2.0", format="gguf", task="chat-completion", source="bundled", curated=True,
                   scan_status="passed", sha256="ab" * 32, offer="", owner="platform")
ON = FilterFacts(enabled=True, hate="medium", sexual="medium", violence="medium", self_harm="medium")
USER = UserFacts(id="usr_1", name="alice", role="contributor", workspace="team", platform_admin=False)
ACTOR = Principal(user_id="usr_1", user_name="alice", is_platform_admin=False, key_id="key_1", workspace_id="ws_1",
                  workspace_name="team", role=Role.CONTRIBUTOR)


def deployment(**kw: object) -> DeploymentFacts:
    base = {"id": "new", "name": "d", "workspace": "team", "model": MODEL, "type": "serverless", "geography": "eu",
            "instances": 1, "public_network_access": False, "allowed_ranges": ("10.0.0.0/8",), "content_filter": ON}
    return DeploymentFacts(**{**base, **kw})  # type: ignore[arg-type]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    d = Database(f"sqlite:///{tmp_path / 'meta.db'}")
    migrate.upgrade(d.engine)
    from modelport.db.tables import Workspace
    with d.session() as s:
        s.add(Workspace(id="ws_1", name="team"))
        s.add(Workspace(id="ws_2", name="other"))
    yield d
    d.dispose()


def save(db: Database, engine: PolicyEngine, policy_id: str, text: str, workspace_id: str | None = None) -> None:
    checked = compiler.check_document(policy_id, text)
    with db.session() as s:
        row = s.scalar(select(Policy).where(Policy.scope_key == (workspace_id or ""), Policy.policy_id == policy_id))
        if row is None:
            row = Policy(policy_id=policy_id, scope_key=workspace_id or "", workspace_id=workspace_id)
            s.add(row)
        row.cedar, row.audit = checked.text, checked.audit
    engine.reload()


# -- the compiler ------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "says"), [
    ("@id(\"x\") permit(principal, action, resource);", "Only forbid policies"),
    ("forbid(principal, action, resource) when { ", "not valid Cedar"),
    ("forbid(principal, action == Action::\"deploy\", resource) when { resource.geograpy == \"eu\" };",
     "geograpy"),
    ("forbid(principal, action == Action::\"download_model\", resource) when { resource.geography == \"eu\" };",
     "does not match the schema"),
    ("forbid(principal, action == Action::\"launch\", resource);", "does not match the schema"),
    ("forbid(principal, action, resource); forbid(principal, action, resource);", "exactly one"),
    ("forbid(principal == ?principal, action, resource);", "Templates"),
    ("@id(\"other\") forbid(principal, action, resource);", "make them equal"),
    ("forbid(principal, action, resource) when { " + "(" * 600 + "true" + ")" * 600 + " };", "nests brackets"),
    ("forbid(principal, action, resource) when { resource.name == \"" + "a" * 20000 + "\" };", "at most"),
])
def test_bad_policies_are_refused_with_what_to_fix(text: str, says: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        compiler.check_document("x", text)
    assert says in exc.value.message
    assert exc.value.field == "cedar"


def test_ids_and_audit_annotation() -> None:
    with pytest.raises(InvalidInput):
        compiler.check_id("Bad Id")
    with pytest.raises(InvalidInput, match="reserved"):
        compiler.check_id("modelport-base-permit")
    c = compiler.check_document("geo", '@audit\nforbid(principal, action == Action::"deploy", resource);')
    assert c.audit and c.text.startswith('@id("geo")') and c.actions == {"deploy"}
    c = compiler.check_document("geo", '@id("geo") forbid(principal, action, resource);')
    assert not c.audit and c.actions == set(compiler.ACTIONS)


def test_brackets_inside_strings_and_comments_do_not_count() -> None:
    assert compiler.nesting_depth('x == "((((((" // ((((((\n && (a)') == 1


def test_every_starter_policy_compiles() -> None:
    files = sorted((ROOT / "policies").glob("*.cedar"))
    assert len(files) == 7
    for f in files:
        assert compiler.check_document(f.stem, f.read_text()).id == f.stem


def test_model_sha256_of_several_files_is_the_digest_of_its_lines() -> None:
    assert model_sha256([("a.gguf", "11")]) == "11"
    import hashlib
    assert model_sha256([("b", "2"), ("a", "1")]) == hashlib.sha256(b"a 1\nb 2\n").hexdigest()


# -- the decision -------------------------------------------------------------------------------

def test_no_policy_allows_and_a_forbid_denies_with_its_id(db: Database) -> None:
    engine = PolicyEngine(db)
    assert engine.decide(USER, "ws_1", "deploy", deployment()).allowed
    save(db, engine, "eu-only", 'forbid(principal, action == Action::"deploy", resource) '
                                'unless { resource.geography == "eu" };')
    assert engine.decide(USER, "ws_1", "deploy", deployment()).allowed
    d = engine.decide(USER, "ws_1", "deploy", deployment(geography="us"))
    assert not d.allowed and d.denied_by == ("eu-only",) and d.audited_by == ()
    # Another action is not governed by it.
    assert engine.decide(USER, "ws_1", "download_model", MODEL).allowed


def test_audit_allows_and_names_the_policy(db: Database) -> None:
    engine = PolicyEngine(db)
    save(db, engine, "eu-audit", '@audit forbid(principal, action == Action::"deploy", resource) '
                                 'unless { resource.geography == "eu" };')
    d = engine.decide(USER, "ws_1", "deploy", deployment(geography="us"))
    assert d.allowed and d.audited_by == ("eu-audit",) and d.denied_by == ()


def test_workspace_policies_apply_in_their_workspace_and_only_add(db: Database) -> None:
    engine = PolicyEngine(db)
    save(db, engine, "no-dedicated", 'forbid(principal, action == Action::"deploy", resource) '
                                     'when { resource.type == "dedicated" };', workspace_id="ws_1")
    save(db, engine, "eu-only", 'forbid(principal, action == Action::"deploy", resource) '
                                'unless { resource.geography == "eu" };')
    assert engine.decide(USER, "ws_1", "deploy", deployment(type="dedicated")).denied_by == ("no-dedicated",)
    assert engine.decide(USER, "ws_2", "deploy", deployment(type="dedicated")).allowed
    # The platform policy holds in both: a workspace's policies cannot take it away.
    for ws in ("ws_1", "ws_2"):
        assert engine.decide(USER, ws, "deploy", deployment(geography="us")).denied_by == ("eu-only",)
    both = engine.decide(USER, "ws_1", "deploy", deployment(type="dedicated", geography="us"))
    assert both.denied_by == ("eu-only", "no-dedicated")


def test_a_policy_that_fails_to_evaluate_denies(db: Database) -> None:
    engine = PolicyEngine(db)
    # Valid against the schema, but overflows at run time for any instance count.
    save(db, engine, "overflow", 'forbid(principal, action == Action::"deploy", resource) '
                                 'when { resource.instances * 9223372036854775807 > 100 && false };')
    d = engine.decide(USER, "ws_1", "deploy", deployment(instances=2))
    assert not d.allowed and d.denied_by == ("overflow",)


def test_enforce_raises_403_naming_ids_and_audits_ids_only(db: Database) -> None:
    engine = PolicyEngine(db)
    save(db, engine, "no-public", 'forbid(principal, action == Action::"deploy", resource) '
                                  'when { resource.public_network_access };')
    save(db, engine, "eu-audit", '@audit forbid(principal, action == Action::"deploy", resource) '
                                 'unless { resource.geography == "eu" };')
    with pytest.raises(PolicyDenied) as exc:
        engine.enforce(ACTOR, "deploy", deployment(public_network_access=True, geography="us", name="secret-name"))
    assert exc.value.status_code == 403 and exc.value.details["policies"] == ["no-public"]
    assert "no-public" in exc.value.message
    engine.enforce(ACTOR, "deploy", deployment(geography="us"))  # audited, allowed
    with db.session() as s:
        events = s.scalars(select(AuditEvent).where(AuditEvent.action.like("policy.%")).order_by(AuditEvent.id)).all()
        assert [(e.action, e.outcome) for e in events] == [("policy.deny", "denied"), ("policy.audit", "audited")]
        assert events[0].detail == {"action": "deploy", "denied_by": ["no-public"], "audited_by": ["eu-audit"],
                                    "model": "mdl_1"}
        assert "secret-name" not in repr([e.detail for e in events])


def test_reader_role_and_principal_attributes_are_seen(db: Database) -> None:
    engine = PolicyEngine(db)
    save(db, engine, "owners-deploy", 'forbid(principal, action == Action::"deploy", resource) '
                                      'unless { principal.role == "owner" || principal.platform_admin };')
    assert not engine.decide(USER, "ws_1", "deploy", deployment()).allowed
    owner = UserFacts(id="usr_2", name="bob", role="owner", workspace="team", platform_admin=False)
    assert engine.decide(owner, "ws_1", "deploy", deployment()).allowed


def test_edits_racing_decisions_never_show_a_half_updated_set(db: Database) -> None:
    """Two versions of one policy both deny the request; a set with neither (the old removed, the
    new not yet in) would allow it. Decisions run while the policy is replaced again and again."""
    engine = PolicyEngine(db)
    versions = ['forbid(principal, action == Action::"deploy", resource) when { resource.geography == "us" };',
                'forbid(principal, action == Action::"deploy", resource) when { resource.instances == 1 };']
    save(db, engine, "flip", versions[0])
    stop = threading.Event()
    seen: list[tuple[bool, tuple[str, ...]]] = []

    def decide() -> None:
        while not stop.is_set():
            d = engine.decide(USER, "ws_1", "deploy", deployment(geography="us"))
            seen.append((d.allowed, d.denied_by))

    threads = [threading.Thread(target=decide) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(40):
            save(db, engine, "flip", versions[i % 2])
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert len(seen) > 40
    assert set(seen) == {(False, ("flip",))}


def test_a_save_by_another_server_is_noticed_within_the_refresh_interval(db: Database) -> None:
    """Two engines on one database stand for two servers: the second reloads on its own."""
    mine, theirs = PolicyEngine(db, refresh_seconds=0.0), PolicyEngine(db, refresh_seconds=3600)
    assert mine.decide(USER, "ws_1", "deploy", deployment(geography="us")).allowed
    save(db, theirs, "eu-only", 'forbid(principal, action == Action::"deploy", resource) '
                                'unless { resource.geography == "eu" };')
    assert mine.decide(USER, "ws_1", "deploy", deployment(geography="us")).denied_by == ("eu-only",)
    with db.session() as s:
        s.delete(s.scalar(select(Policy)))
    assert mine.decide(USER, "ws_1", "deploy", deployment(geography="us")).allowed


def test_the_inference_path_does_not_consult_policies() -> None:
    """Policies govern the control plane: nothing under modelport/inference imports them."""
    for f in (ROOT / "modelport" / "inference").glob("*.py"):
        assert "modelport.policies" not in f.read_text(), f


def test_subscribe_is_decided_on_the_offered_model(db: Database) -> None:
    """The marketplace calls `enforce(actor, "subscribe", ModelFacts...)`; the model's offer is an attribute."""
    engine = PolicyEngine(db)
    save(db, engine, "no-offers", 'forbid(principal, action == Action::"subscribe", resource) '
                                  'when { resource.offer != "" && resource.publisher != "HuggingFaceTB" };')
    offered = ModelFacts(**{**MODEL.__dict__, "publisher": "Acme", "offer": "offer_1"})
    with pytest.raises(PolicyDenied) as exc:
        engine.enforce(ACTOR, "subscribe", offered)
    assert exc.value.details == {"policies": ["no-offers"], "action": "subscribe"}
    assert engine.enforce(ACTOR, "subscribe", MODEL).allowed


# -- saves and deletes in any order: the set in force is always the stored one ------------------

RULES = {
    "no-us": 'forbid(principal, action == Action::"deploy", resource) when { resource.geography == "us" };',
    "no-dedicated": 'forbid(principal, action in [Action::"deploy", Action::"update_deployment"], resource) '
                    'when { resource.type == "dedicated" };',
    "no-public": 'forbid(principal, action, resource) when { resource is Deployment && '
                 'resource.public_network_access };',
    "mit-only": 'forbid(principal, action == Action::"download_model", resource) unless { resource.license == "MIT" };',
    "audit-big": '@audit forbid(principal, action == Action::"deploy", resource) when { resource.instances > 2 };',
}
#: The rules above, by hand: does rule R forbid ACTION on RESOURCE?
BY_HAND = {
    "no-us": lambda a, r: a == "deploy" and r.geography == "us",
    "no-dedicated": lambda a, r: a in ("deploy", "update_deployment") and r.type == "dedicated",
    "no-public": lambda a, r: isinstance(r, DeploymentFacts) and r.public_network_access,
    "mit-only": lambda a, r: a == "download_model" and r.license != "MIT",
    "audit-big": lambda a, r: a == "deploy" and r.instances > 2,
}
REQUESTS = [("deploy", deployment(geography="us")), ("deploy", deployment(type="dedicated", instances=3)),
            ("update_deployment", deployment(public_network_access=True)), ("download_model", MODEL),
            ("deploy", deployment())]


def test_any_sequence_of_saves_and_deletes_decides_as_the_stored_set(db: Database) -> None:
    """One engine lives through random saves and deletes in both scopes; after each, every decision
    equals that of an engine built afresh from the database, and that of the rules by hand."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    engine = PolicyEngine(db, refresh_seconds=3600)
    ops = st.lists(st.tuples(st.sampled_from(sorted(RULES)), st.sampled_from([None, "ws_1", "ws_2"]),
                             st.booleans()), max_size=12)

    @settings(max_examples=25, deadline=None)
    @given(ops)
    def run(steps: list[tuple[str, str | None, bool]]) -> None:
        with db.session() as s:
            for row in s.scalars(select(Policy)):
                s.delete(row)
        engine.reload()
        stored: dict[tuple[str | None, str], str] = {}
        for rule, ws, keep in steps:
            platform_has = (None, rule) in stored
            a_workspace_has = any(w is not None and r == rule for w, r in stored)
            if (ws is not None and platform_has) or (ws is None and a_workspace_has):
                continue  # a workspace id may not take a platform id, nor the reverse (the service refuses it)
            if keep:
                save(db, engine, rule, RULES[rule], workspace_id=ws)
                stored[(ws, rule)] = RULES[rule]
            elif (ws, rule) in stored:
                with db.session() as s:
                    s.delete(s.scalar(select(Policy).where(Policy.scope_key == (ws or ""), Policy.policy_id == rule)))
                engine.reload()
                del stored[(ws, rule)]
            fresh = PolicyEngine(db)
            for ws_id in ("ws_1", "ws_2", None):
                for action, resource in REQUESTS:
                    got = engine.decide(USER, ws_id, action, resource)
                    want = fresh.decide(USER, ws_id, action, resource)
                    assert (got.allowed, got.denied_by, got.audited_by) == (want.allowed, want.denied_by,
                                                                             want.audited_by)
                    hits = sorted(r for (w, r) in stored if (w is None or w == ws_id) and BY_HAND[r](action, resource))
                    assert got.denied_by == tuple(r for r in hits if r != "audit-big")
                    assert got.audited_by == tuple(r for r in hits if r == "audit-big")

    run()


@pytest.mark.parametrize("body", ["1+" * 2200 + "1 == 0", "||".join(["false"] * 2200)])
def test_an_unbracketed_chain_too_deep_to_read_is_400_not_500(body: str) -> None:
    """Review finding M3: chains of + or || pass the bracket count but nest as deeply in Cedar's
    JSON form, whose reading recursed past Python's limit (a 500)."""
    from modelport.policies.compiler import check_document
    with pytest.raises(InvalidInput, match="nest too deeply"):
        check_document("deep", f"forbid(principal, action, resource) when {{ {body} }};")
