"""AwsKmsProvider contract tests against a KMS-compatible server on loopback (moto server mode).

The real boto3 client talks HTTP to `moto_server` started by the session fixture, with dummy
credentials. Wrap, unwrap, rewrap (ReEncrypt), rotate-on-demand, error mapping and an
unreachable endpoint are tested here. Key-state enforcement is not: moto lets a disabled key
decrypt and keeps deleted keys for the 7-day minimum window, so disable, rotate and destroy
semantics are tested on the local keystore (tests/kms/test_kms_local.py) and through the
datastore with a local CMK.
"""

from __future__ import annotations

import os

import pytest

from modelport.kms import (
    KeyAccessDenied,
    KeyNotFound,
    KeyProvider,
    KeyProviderUnavailable,
    KeyState,
    UnsupportedOperation,
    UnwrapFailed,
    WrappedKey,
)
from modelport.kms.aws import AwsKmsProvider, from_settings
from modelport.kms.testing import free_port
from tests.support.kms import aws_provider_for
from tests.support.settings import settings_at

CTX = {"modelport:workspace": "ws1", "modelport:object": "obj1", "modelport:version": "1"}


def test_is_a_key_provider(aws_provider: AwsKmsProvider) -> None:
    assert isinstance(aws_provider, KeyProvider)


def test_wrap_unwrap_round_trip(aws_provider: AwsKmsProvider) -> None:
    arn = aws_provider.create_key(labels={"workspace": "ws1"})
    data_key = os.urandom(32)
    wrapped = aws_provider.wrap(arn, data_key, CTX)
    assert (wrapped.provider, wrapped.key_ref, wrapped.key_version) == ("aws", arn, 0)
    assert data_key not in wrapped.ciphertext
    assert aws_provider.unwrap(wrapped, CTX) == data_key
    info = aws_provider.describe(arn)
    assert info.state is KeyState.ENABLED and info.versioned is False


def test_alias_reference(aws_provider: AwsKmsProvider) -> None:
    aws_provider.create_key("modelport-test-alias")
    wrapped = aws_provider.wrap("alias/modelport-test-alias", b"d" * 32, CTX)
    assert aws_provider.unwrap(wrapped, CTX) == b"d" * 32
    aws_provider.disable("alias/modelport-test-alias")
    assert aws_provider.describe("alias/modelport-test-alias").state is KeyState.DISABLED


def test_encryption_context_binds_the_wrapped_key(aws_provider: AwsKmsProvider) -> None:
    arn = aws_provider.create_key()
    wrapped = aws_provider.wrap(arn, os.urandom(32), CTX)
    for other in ({**CTX, "modelport:object": "obj2"}, {**CTX, "modelport:workspace": "ws2"}, {}):
        with pytest.raises(UnwrapFailed):
            aws_provider.unwrap(wrapped, other)


def test_tampered_ciphertext_is_rejected(aws_provider: AwsKmsProvider) -> None:
    arn = aws_provider.create_key()
    wrapped = aws_provider.wrap(arn, os.urandom(32), CTX)
    flipped = bytearray(wrapped.ciphertext)
    flipped[-1] ^= 1
    with pytest.raises(UnwrapFailed):
        aws_provider.unwrap(WrappedKey("aws", arn, 0, bytes(flipped)), CTX)


def test_ciphertext_of_another_key_is_refused(aws_provider: AwsKmsProvider) -> None:
    """AWS answers IncorrectKeyException (UnwrapFailed), moto AccessDeniedException (KeyAccessDenied)."""
    a, b = aws_provider.create_key(), aws_provider.create_key()
    wrapped = aws_provider.wrap(a, os.urandom(32), CTX)
    with pytest.raises((UnwrapFailed, KeyAccessDenied)):
        aws_provider.unwrap(WrappedKey("aws", b, 0, wrapped.ciphertext), CTX)


def test_rotate_then_rewrap_keeps_the_data_key(aws_provider: AwsKmsProvider) -> None:
    arn = aws_provider.create_key()
    data_key = os.urandom(32)
    old = aws_provider.wrap(arn, data_key, CTX)
    assert aws_provider.rotate(arn) == 0  # KMS does not expose backing-key versions
    assert aws_provider.unwrap(old, CTX) == data_key
    new = aws_provider.rewrap(old, CTX)
    assert new.ciphertext != old.ciphertext
    assert aws_provider.unwrap(new, CTX) == data_key


def test_state_changes_are_sent_to_kms(aws_provider: AwsKmsProvider) -> None:
    """moto records the state (it does not enforce it): describe reflects each call.

    Key-administration calls resolve the ARN (or alias) to the key id first, as AWS requires.
    """
    arn = aws_provider.create_key()
    aws_provider.disable(arn)
    assert aws_provider.describe(arn).state is KeyState.DISABLED
    aws_provider.enable(arn)
    assert aws_provider.describe(arn).state is KeyState.ENABLED
    with pytest.raises(UnsupportedOperation):
        aws_provider.destroy(arn)  # must be disabled first
    aws_provider.disable(arn)
    aws_provider.destroy(arn)
    assert aws_provider.describe(arn).state is KeyState.DESTROYED


def test_unknown_key_and_unsupported_operations(aws_provider: AwsKmsProvider) -> None:
    with pytest.raises(KeyNotFound):
        aws_provider.wrap("alias/does-not-exist", os.urandom(32), CTX)
    with pytest.raises(UnsupportedOperation):
        aws_provider.set_min_decryption_version("alias/any", 2)


def test_unreachable_endpoint_is_service_unavailable() -> None:
    provider = aws_provider_for(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(KeyProviderUnavailable) as info:
        provider.wrap("alias/any", os.urandom(32), CTX)
    assert info.value.status_code == 503


def test_from_settings(tmp_path) -> None:
    assert from_settings(settings_at(tmp_path)) is None
    provider = from_settings(settings_at(tmp_path, {"MODELPORT_KMS_AWS_REGION": "us-east-1"}))
    assert isinstance(provider, AwsKmsProvider) and provider.name == "aws"
