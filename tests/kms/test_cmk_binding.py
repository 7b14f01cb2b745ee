"""SEC-H3: a customer-managed key in AWS KMS belongs to one workspace.

A real server on loopback is configured with the AWS KMS provider pointed at moto in server mode
(the `kms_endpoint` fixture); the keys' owner acts in "AWS" with the real boto3 client: creates
keys, aliases and the `modelport:workspace` tag. Workspace owners act over HTTP. moto does not
enforce key states on use (a disabled key still decrypts), so these tests read the key state
that KMS reports instead of relying on failed decryptions.
"""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest

from modelport.datastore.store import Datastore
from modelport.db import migrate
from modelport.db.engine import Database
from modelport.encryption_keys.service import EncryptionKeyService
from modelport.errors import Forbidden
from modelport.identity.principal import Principal
from modelport.identity.roles import Role
from modelport.kms.local import LocalKeystore
from tests.support.server import Server, lean_server
from tests.support.tenants import Tenant, make_tenant, ok, unique

TAG = "modelport:workspace"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, kms_endpoint: str) -> Iterator[Server]:
    yield from lean_server(tmp_path_factory, MODELPORT_KMS_AWS_REGION="us-east-1",
                           MODELPORT_KMS_AWS_ENDPOINT_URL=kms_endpoint, AWS_ACCESS_KEY_ID="testing",
                           AWS_SECRET_ACCESS_KEY="testing")


@pytest.fixture(scope="module")
def aws(kms_endpoint: str):  # type: ignore[no-untyped-def]
    """The keys' owner, in AWS."""
    return boto3.client("kms", endpoint_url=kms_endpoint, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing")


@pytest.fixture
def a(server: Server) -> Tenant:
    return make_tenant(server, roles=("owner",))


@pytest.fixture
def b(server: Server) -> Tenant:
    return make_tenant(server, roles=("owner",))


def _key(aws, workspace: Tenant | None, alias: bool = True) -> tuple[str, str, str]:  # type: ignore[no-untyped-def]
    """A new key (tagged for `workspace`): (ARN, key id, alias name)."""
    tags = [{"TagKey": TAG, "TagValue": workspace.id}] if workspace else []
    meta = aws.create_key(Description="a customer's key", Tags=tags)["KeyMetadata"]
    name = f"alias/{unique('cmk')}"
    if alias:
        aws.create_alias(AliasName=name, TargetKeyId=meta["KeyId"])
    return meta["Arn"], meta["KeyId"], name


def _state(aws, arn: str) -> str:  # type: ignore[no-untyped-def]
    return aws.describe_key(KeyId=arn)["KeyMetadata"]["KeyState"]


def _register(server: Server, tenant: Tenant, ref: str):  # type: ignore[no-untyped-def]
    with server.client(tenant.keys["owner"]) as c:
        return c.post("/api/v1/cmk", json={"provider": "aws", "key_ref": ref})


def _workspace_key(server: Server, tenant: Tenant) -> dict:
    with server.client(tenant.keys["owner"]) as c:
        return ok(c.get("/api/v1/workspace-key")).json()


def test_an_owner_registers_its_own_tagged_key_by_arn_id_or_alias(server: Server, aws, a: Tenant) -> None:  # type: ignore[no-untyped-def]
    arn, key_id, alias = _key(aws, a)
    for ref in (alias, key_id, arn):
        r = _register(server, a, ref)
        assert r.status_code == 201, r.text
        assert (r.json()["provider"], r.json()["key_ref"], r.json()["cmk"]) == ("aws", arn, True)  # stored as ARN
    with server.client(a.keys["owner"]) as c:
        ok(c.post("/api/v1/cmk/disable"))
        assert _state(aws, arn) == "Disabled"
        ok(c.post("/api/v1/cmk/enable"))
        assert _state(aws, arn) == "Enabled"
        ok(c.post("/api/v1/cmk/rotate"))


def test_another_workspaces_key_is_refused_by_any_name(server: Server, aws, a: Tenant, b: Tenant) -> None:  # type: ignore[no-untyped-def]
    """The finding: B registered A's key, then disabled it, and A's data went dark."""
    arn, key_id, alias = _key(aws, a)
    ok(_register(server, a, arn), 201)
    for ref in (arn, key_id, alias):
        r = _register(server, b, ref)
        assert r.status_code == 403, r.text
        err = r.json()["error"]
        assert err["field"] == "key_ref" and b.id in err["message"] and arn not in err["message"]
    assert _workspace_key(server, b)["cmk"] is False
    # What B can reach is its own workspace key only: A's key stays enabled whatever B does.
    with server.client(b.keys["owner"]) as c:
        for step in ("/api/v1/cmk/disable", "/api/v1/cmk/rotate", "/api/v1/cmk/enable"):
            c.post(step)
        assert _state(aws, arn) == "Enabled"
        ok(c.post("/api/v1/cmk/disable"))
    assert _state(aws, arn) == "Enabled"
    assert _workspace_key(server, a)["state"] == "enabled"


def test_untagged_and_unknown_keys_are_refused(server: Server, aws, a: Tenant) -> None:  # type: ignore[no-untyped-def]
    arn, _, alias = _key(aws, None)
    for ref in (arn, alias):
        r = _register(server, a, ref)
        assert r.status_code == 403 and "modelport:workspace" in r.json()["error"]["message"], r.text
    r = _register(server, a, "alias/no-such-key-" + unique("x"))
    assert r.status_code == 404, r.text
    with server.client(a.keys["owner"]) as c:  # the provider's name is `aws`
        r = c.post("/api/v1/cmk", json={"provider": "aws-kms", "key_ref": arn})
        assert r.status_code == 400 and r.json()["error"]["field"] == "provider", r.text
    assert _workspace_key(server, a)["cmk"] is False


def test_a_key_is_registered_by_one_workspace_only(server: Server, aws, a: Tenant, b: Tenant) -> None:  # type: ignore[no-untyped-def]
    """The key's owner re-tags a registered key for another workspace: that one still cannot have it
    while the first holds it, by ARN, key id, or an alias made later."""
    arn, key_id, alias = _key(aws, a)
    ok(_register(server, a, alias), 201)
    aws.tag_resource(KeyId=arn, Tags=[{"TagKey": TAG, "TagValue": b.id}])
    second_alias = f"alias/{unique('cmk')}"
    aws.create_alias(AliasName=second_alias, TargetKeyId=key_id)
    for ref in (arn, key_id, alias, second_alias):
        r = _register(server, b, ref)
        assert r.status_code == 409 and "another workspace" in r.json()["error"]["message"], (ref, r.text)
    assert _workspace_key(server, b)["cmk"] is False
    # And A, whose key no longer names it, cannot switch it off or on or rotate it any more.
    with server.client(a.keys["owner"]) as c:
        for step in ("/api/v1/cmk/disable", "/api/v1/cmk/enable", "/api/v1/cmk/rotate"):
            r = c.post(step)
            assert r.status_code == 403 and "no longer bound" in r.json()["error"]["message"], (step, r.text)
    assert _state(aws, arn) == "Enabled"
    # Once A goes back to its own key, B may register it.
    with server.client(a.keys["owner"]) as c:
        ok(c.delete("/api/v1/cmk"))
    assert ok(_register(server, b, second_alias), 201).json()["key_ref"] == arn


def test_a_provider_that_cannot_prove_ownership_holds_no_cmk(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A key provider without `key_binding` (here a second local keystore, registered the way a
    third-party provider would be) is refused for customer-managed keys, whatever key it names."""
    other = LocalKeystore(tmp_path / "other", b"k" * 32, name="other")
    ref = other.create_key("some-key", labels={"workspace": "ws_0000000000000001", "purpose": "cmk"})
    store = Datastore.create(tmp_path / "ds", platform_master_key=b"p" * 32, workspace_master_key=b"w" * 32,
                             providers=[other])
    db = Database(f"sqlite:///{tmp_path / 'm.db'}")
    migrate.upgrade(db.engine)
    owner = Principal(user_id="usr_0000000000000001", user_name="o", is_platform_admin=False,
                      key_id="key_0000000000000001", workspace_id="ws_0000000000000001", workspace_name="w",
                      role=Role.OWNER)
    try:
        with pytest.raises(Forbidden, match="cannot hold customer-managed keys"):
            EncryptionKeyService(db, store).register_cmk(owner, "other", ref)
        assert store.ensure_workspace_key("ws_0000000000000001").cmk is False
    finally:
        db.dispose()
