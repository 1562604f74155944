"""A wrapping key sealed by an AES key inside a PKCS#11 token (an HSM; SoftHSM2 in the tests).

The token's key is found by its label and used through C_Encrypt/C_Decrypt with CKM_AES_GCM
(a fresh 12-byte IV, the volume's key ID as associated data, a 16-byte tag): the key itself
never leaves the token, so it can and should be CKA_EXTRACTABLE=false, CKA_SENSITIVE=true.

Each operation loads the vendor's module, logs in, works and unloads it again (C_Finalize):
the mount daemon forks after unlocking and must not carry an HSM session into the child.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..crypto.volume_config import KDF_PKCS11
from ..errors import KeyServiceError, KeyServiceUnreachable

IV_BYTES = 12
TAG_BITS = 128


class Pkcs11Service:
    """store.KeyService for one AES key (by label) in one token (by label)."""

    kind = KDF_PKCS11

    def __init__(self, module: str, token: str, key_label: str, pin: bytes) -> None:
        self.reference: dict[str, str | int] = {"module": module, "token": token, "key_label": key_label}
        self._module, self._token, self._label = module, token, key_label
        self._pin = pin

    def __repr__(self) -> str:  # the PIN stays out of tracebacks
        return f"Pkcs11Service(module={self._module!r}, token={self._token!r}, key_label={self._label!r})"

    def __str__(self) -> str:
        return f"the AES key {self._label!r} in PKCS#11 token {self._token!r}"

    def seal(self, plaintext: bytes, associated_data: bytes) -> tuple[bytes, bytes]:
        iv = secrets.token_bytes(IV_BYTES)
        with self._key("seal the volume's wrapping key") as (key, params):
            return iv, bytes(key.encrypt(plaintext, **params(iv, associated_data)))

    def unseal(self, iv: bytes, sealed: bytes, associated_data: bytes) -> bytes:
        with self._key("unseal the volume's wrapping key") as (key, params):
            return bytes(key.decrypt(sealed, **params(iv, associated_data)))

    @contextmanager
    def _key(self, purpose: str) -> Iterator[tuple[Any, Any]]:
        try:
            import pkcs11
            from pkcs11.mechanisms import GCMParams
        except ImportError:
            raise KeyServiceUnreachable(
                "PKCS#11 support is not installed: pip install python-pkcs11 (see docs/key-services.md)"
            ) from None

        def params(iv: bytes, associated_data: bytes) -> dict[str, Any]:
            return {"mechanism": pkcs11.Mechanism.AES_GCM,
                    "mechanism_param": GCMParams(iv, associated_data, TAG_BITS)}

        where = f"token {self._token!r} of PKCS#11 module {self._module}"
        try:
            lib = pkcs11.lib(self._module)
        except pkcs11.PKCS11Error as exc:
            raise KeyServiceUnreachable(
                f"cannot load the PKCS#11 module {self._module} ({exc}): install the HSM vendor's "
                "client or correct module-path") from None
        try:
            with _session(pkcs11, lib, self._token, self._pin, where) as session:
                key = _find_key(pkcs11, session, self._label, where)
                try:
                    yield key, params
                except (pkcs11.MechanismInvalid, pkcs11.MechanismParamInvalid,
                        pkcs11.FunctionNotSupported):
                    raise KeyServiceError(f"the HSM ({where}) does not offer AES-GCM (CKM_AES_GCM) for key "
                                          f"{self._label!r}, which encfs-pacs needs") from None
                except pkcs11.PKCS11Error as exc:
                    raise KeyServiceError(
                        f"the HSM ({where}) refused to {purpose} with key {self._label!r} "
                        f"({type(exc).__name__}): the key may not encrypt/decrypt (CKA_ENCRYPT/"
                        "CKA_DECRYPT), or it is a different key under that label, or the volume config "
                        "was altered") from None
        finally:
            pkcs11.unload(self._module)


@contextmanager
def _session(pkcs11: Any, lib: Any, token_label: str, pin: bytes, where: str) -> Iterator[Any]:
    try:
        token = lib.get_token(token_label=token_label)
    except pkcs11.NoSuchToken:
        raise KeyServiceUnreachable(
            f"no {where} is present: is the HSM connected and the token label right "
            "(softhsm2-util --show-slots / the vendor's tool lists them)?") from None
    except pkcs11.MultipleTokensReturned:
        raise KeyServiceError(f"several tokens are labelled {token_label!r}: relabel one") from None
    except pkcs11.PKCS11Error as exc:
        raise KeyServiceUnreachable(f"cannot reach {where}: {type(exc).__name__}") from None
    try:
        session = token.open(user_pin=pin.decode("utf-8", "surrogateescape"))
    except (pkcs11.PinIncorrect, pkcs11.PinInvalid, pkcs11.PinLenRange):
        raise KeyServiceError(f"the HSM refused the PIN for {where} (check pin-source; repeated "
                              "wrong PINs lock the token)") from None
    except (pkcs11.PinLocked, pkcs11.PinExpired, pkcs11.UserPinNotInitialized) as exc:
        raise KeyServiceError(f"the user PIN of {where} is unusable ({type(exc).__name__}): the HSM "
                              "officer must reset it") from None
    except pkcs11.PKCS11Error as exc:
        raise KeyServiceUnreachable(f"cannot log in to {where}: {type(exc).__name__}") from None
    try:
        yield session
    finally:
        # The token may have gone away mid-operation; the error that matters is already raised.
        with contextlib.suppress(pkcs11.PKCS11Error):
            session.close()


def _find_key(pkcs11: Any, session: Any, label: str, where: str) -> Any:
    try:
        return session.get_key(label=label, key_type=pkcs11.KeyType.AES,
                               object_class=pkcs11.ObjectClass.SECRET_KEY)
    except pkcs11.NoSuchKey:
        raise KeyServiceError(f"no AES key labelled {label!r} in {where}: it was deleted or never "
                              "created (the volume cannot be opened without it or a recovery key)") from None
    except pkcs11.MultipleObjectsReturned:
        raise KeyServiceError(f"several AES keys are labelled {label!r} in {where}: "
                              "the label must name exactly one key") from None
