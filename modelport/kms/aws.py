"""AwsKmsProvider: customer-managed keys held in AWS KMS (or any KMS-compatible endpoint).

Data keys are wrapped with `Encrypt` under the customer's key, with the wrap context as the
KMS EncryptionContext (so a wrapped key moved to another object fails `Decrypt`), and `Decrypt`
names the expected key id so a ciphertext made under another key is refused. KMS keeps the key
versions (backing keys) inside its ciphertext blob and does not expose them: `key_version` is
always 0 here, `rotate` is `RotateKeyOnDemand` and `rewrap` is `ReEncrypt`, which moves a
wrapped key to the current backing key without the data key leaving KMS.

A key is a workspace's customer-managed key only when its owner says so in AWS: the key carries
the tag `modelport:workspace` = the workspace id (`key_binding` reads it, with the key's ARN, to
which aliases and key ids resolve). AWS KMS reads tags only of keys in the caller's own account.

What KMS does not offer is refused with UnsupportedOperation: a minimum decryption version
(KMS keeps every backing key). `destroy` schedules deletion with the shortest window KMS allows
(7 days); the key is unusable from that moment.

All botocore failures are mapped at this boundary: connection failures and throttling become
KeyProviderUnavailable (503), key states become KeyDisabled/KeyNotFound, a ciphertext that does
not authenticate becomes UnwrapFailed. Messages never carry key material or ARNs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from modelport.errors import ModelportError
from modelport.kms.base import (
    KeyAccessDenied,
    KeyBinding,
    KeyDisabled,
    KeyInfo,
    KeyNotFound,
    KeyProviderError,
    KeyProviderUnavailable,
    KeyState,
    UnsupportedOperation,
    UnwrapFailed,
    WrappedKey,
)

if TYPE_CHECKING:
    from botocore.exceptions import ClientError

    from modelport.config import Settings

DELETION_WINDOW_DAYS = 7  # the minimum AWS KMS accepts
WORKSPACE_TAG = "modelport:workspace"  # on a customer-managed key: the id of the workspace it is for

_UNAVAILABLE_CODES = {
    "KMSInternalException",
    "DependencyTimeoutException",
    "ThrottlingException",
    "LimitExceededException",
    "ServiceUnavailableException",
    "KeyUnavailableException",
    "CustomKeyStoreInvalidStateException",
}
_STATES = {
    "Enabled": KeyState.ENABLED,
    "Disabled": KeyState.DISABLED,
    "PendingDeletion": KeyState.DESTROYED,
    "PendingReplicaDeletion": KeyState.DESTROYED,
}


class AwsKmsProvider:
    """A KeyProvider backed by AWS KMS symmetric keys (SYMMETRIC_DEFAULT)."""

    def __init__(
        self,
        *,
        name: str = "aws",
        region_name: str | None = None,
        endpoint_url: str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        aws_session_token: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 10.0,
        max_attempts: int = 3,
        client: Any = None,
    ) -> None:
        self.name = name
        if client is None:
            # boto3 is imported here, not at the top: every server loads this module to call
            # from_settings (the key provider entry point), and most configure no AWS KMS.
            import boto3
            from botocore.config import Config

            session = boto3.session.Session(
                aws_access_key_id=aws_access_key_id,
                aws_secret_access_key=aws_secret_access_key,
                aws_session_token=aws_session_token,
                region_name=region_name,
            )
            config = Config(
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"max_attempts": max_attempts, "mode": "standard"},
            )
            client = session.client("kms", endpoint_url=endpoint_url, config=config)
        self._client = client

    # ------------------------------------------------------------------------------ key admin
    def create_key(self, key_ref: str | None = None, *, labels: Mapping[str, str] | None = None) -> str:
        """Create a symmetric key; `key_ref`, when given, becomes an alias `alias/<key_ref>`."""
        tags = [{"TagKey": k, "TagValue": v} for k, v in (labels or {}).items()]
        with self._errors():
            meta = self._client.create_key(
                Description="modelport customer-managed key", KeyUsage="ENCRYPT_DECRYPT", Tags=tags
            )["KeyMetadata"]
            if key_ref is not None:
                self._client.create_alias(AliasName=f"alias/{key_ref}", TargetKeyId=meta["KeyId"])
        return meta["Arn"]

    def describe(self, key_ref: str) -> KeyInfo:
        with self._errors():
            meta = self._client.describe_key(KeyId=key_ref)["KeyMetadata"]
        state = _STATES.get(meta.get("KeyState", ""), KeyState.DISABLED)
        return KeyInfo(self.name, key_ref, state, 0, 0, versioned=False)

    def rotate(self, key_ref: str) -> int:
        with self._errors():
            self._client.rotate_key_on_demand(KeyId=self._key_id(key_ref))
        return 0

    def set_min_decryption_version(self, key_ref: str, version: int) -> None:
        raise UnsupportedOperation("AWS KMS keeps every backing key; it has no minimum decryption version")

    def disable(self, key_ref: str) -> None:
        with self._errors():
            self._client.disable_key(KeyId=self._key_id(key_ref))

    def enable(self, key_ref: str) -> None:
        with self._errors():
            self._client.enable_key(KeyId=self._key_id(key_ref))

    def destroy(self, key_ref: str) -> None:
        """Schedule deletion (7 days, the KMS minimum); the key stops working at once."""
        info = self.describe(key_ref)
        if info.state is KeyState.ENABLED:
            raise UnsupportedOperation("disable the key before destroying it; destruction cannot be undone")
        with self._errors():
            self._client.schedule_key_deletion(KeyId=self._key_id(key_ref), PendingWindowInDays=DELETION_WINDOW_DAYS)

    def key_binding(self, key_ref: str) -> KeyBinding:
        """The key's ARN (an alias or key id resolved) and the workspace its WORKSPACE_TAG names."""
        with self._errors():
            arn = self._client.describe_key(KeyId=key_ref)["KeyMetadata"]["Arn"]
            tags: dict[str, str] = {}
            page: dict[str, Any] = {"Truncated": True}
            while page.get("Truncated"):
                marker = {"Marker": page["NextMarker"]} if "NextMarker" in page else {}
                page = self._client.list_resource_tags(KeyId=arn, **marker)
                tags.update({t["TagKey"]: t["TagValue"] for t in page.get("Tags", [])})
        return KeyBinding(arn, tags.get(WORKSPACE_TAG))

    # ------------------------------------------------------------------------------- wrapping
    def wrap(self, key_ref: str, plaintext: bytes, context: Mapping[str, str]) -> WrappedKey:
        with self._errors():
            blob = self._client.encrypt(KeyId=key_ref, Plaintext=bytes(plaintext), EncryptionContext=dict(context))[
                "CiphertextBlob"
            ]
        return WrappedKey(self.name, key_ref, 0, blob)

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        if wrapped.provider != self.name:
            raise UnwrapFailed("the wrapped key belongs to another key provider")
        with self._errors():
            return self._client.decrypt(
                CiphertextBlob=wrapped.ciphertext, KeyId=wrapped.key_ref, EncryptionContext=dict(context)
            )["Plaintext"]

    def rewrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> WrappedKey:
        with self._errors():
            blob = self._client.re_encrypt(
                CiphertextBlob=wrapped.ciphertext,
                SourceKeyId=wrapped.key_ref,
                SourceEncryptionContext=dict(context),
                DestinationKeyId=wrapped.key_ref,
                DestinationEncryptionContext=dict(context),
            )["CiphertextBlob"]
        return WrappedKey(self.name, wrapped.key_ref, 0, blob)

    # ------------------------------------------------------------------------------ internals
    def _key_id(self, key_ref: str) -> str:
        """The key id behind an ARN or alias: key-administration calls do not accept aliases."""
        with self._errors():
            return self._client.describe_key(KeyId=key_ref)["KeyMetadata"]["KeyId"]

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError  # as boto3 in __init__

        try:
            yield
        except ModelportError:
            raise
        except ClientError as exc:
            raise _map_client_error(exc, self.name) from exc
        except NoCredentialsError as exc:
            raise KeyProviderUnavailable(f"key provider {self.name!r} has no credentials configured") from exc
        except BotoCoreError as exc:
            # Connection refused, DNS, timeouts, closed connections: the provider is unreachable.
            raise KeyProviderUnavailable(
                f"key provider {self.name!r} is unreachable; nothing was written, retry later"
            ) from exc


def _map_client_error(exc: ClientError, name: str) -> ModelportError:
    code = exc.response.get("Error", {}).get("Code", "")
    if code in _UNAVAILABLE_CODES:
        return KeyProviderUnavailable(f"key provider {name!r} is temporarily unavailable ({code}); retry later")
    if code == "DisabledException":
        return KeyDisabled(f"the key is disabled in key provider {name!r}; enable it to use data protected by it")
    if code == "KMSInvalidStateException":
        return KeyDisabled(f"the key in key provider {name!r} is not usable (disabled or pending deletion)")
    if code == "NotFoundException":
        return KeyNotFound(f"no such key in key provider {name!r}", field="key_ref")
    if code in {"InvalidCiphertextException", "IncorrectKeyException"}:
        return UnwrapFailed("the wrapped key did not authenticate (tampered, or bound to another object)")
    if code in {"AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException"}:
        return KeyAccessDenied(f"key provider {name!r} refused access to the key; check its key policy")
    return KeyProviderError(f"key provider {name!r} refused the request ({code or 'unknown error'})")


def from_settings(settings: Settings) -> AwsKmsProvider | None:
    """Build the provider from the installation's settings; None when not configured.

    MODELPORT_KMS_AWS_REGION turns it on; MODELPORT_KMS_AWS_ENDPOINT_URL points it at a
    KMS-compatible server. Credentials come from boto3's usual chain.
    """
    if not settings.kms_aws_region:
        return None
    return AwsKmsProvider(region_name=settings.kms_aws_region, endpoint_url=settings.kms_aws_endpoint_url or None)
