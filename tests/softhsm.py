"""A SoftHSM2 token holding one non-extractable AES-256 key: the HSM of the key-service tests.

Shared by tests/integration/test_kms_pkcs11.py and tests/e2e/test_two_servers.py. Each user
gets its own token folder and config; ``softhsm_token`` points $SOFTHSM2_CONF (inherited by the
CLI subprocesses) at it while it is active, and makes the key with python-pkcs11 as an HSM
officer would with the vendor's tool.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
TOKEN, KEY_LABEL, PIN, SO_PIN = "pacs", "pacs-volume", "246810", "13579135"


def softhsm_unavailable() -> str | None:
    """Why the SoftHSM2 tests cannot run here, or None."""
    try:
        import pkcs11  # noqa: F401
    except ImportError:
        return "python-pkcs11 is not installed (pip install python-pkcs11)"
    if not os.path.exists(MODULE):
        return f"SoftHSM2 is not installed ({MODULE} missing; apt-get install softhsm2)"
    return None


def _pkcs11() -> Any:
    import pkcs11

    return pkcs11


@dataclass
class Hsm:
    folder: Path
    pin_file: Path

    def uri(self, pin_file: Path | None = None, **path_attrs: str) -> str:
        """What `init --kms` takes: the module, the token and key, and this host's PIN file."""
        attrs = {"token": TOKEN, "object": KEY_LABEL, **path_attrs}
        path = ";".join(f"{k}={v}" for k, v in attrs.items() if v)
        return f"pkcs11:{path}?module-path={MODULE}&pin-source=file:{pin_file or self.pin_file}"

    def mount_uri(self, pin_file: Path | None = None) -> str:
        """At mount the volume names the key: only this host's credentials are given."""
        return f"pkcs11:?pin-source=file:{pin_file or self.pin_file}"

    def session(self) -> Any:
        pkcs11 = _pkcs11()
        return pkcs11.lib(MODULE).get_token(token_label=TOKEN).open(user_pin=PIN, rw=True)

    def delete_key(self) -> None:
        pkcs11 = _pkcs11()
        with self.session() as session:
            for key in session.get_objects({pkcs11.Attribute.LABEL: KEY_LABEL}):
                key.destroy()
        pkcs11.unload(MODULE)  # the CLI runs in other processes; do not keep the token open

    def remove_token(self) -> None:
        subprocess.run(["softhsm2-util", "--delete-token", "--token", TOKEN], check=True,
                       capture_output=True, timeout=60)


@contextmanager
def softhsm_token(folder: Path) -> Iterator[Hsm]:
    """A fresh token with the volume key in ``folder``; $SOFTHSM2_CONF names it until exit."""
    pkcs11 = _pkcs11()
    (folder / "tokens").mkdir(parents=True)
    conf = folder / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {folder}/tokens\nobjectstore.backend = file\n"
                    "log.level = ERROR\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SOFTHSM2_CONF", str(conf))
        subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", TOKEN, "--pin", PIN,
                        "--so-pin", SO_PIN], check=True, capture_output=True, timeout=60)
        pin_file = folder / "hsm.pin"
        pin_file.write_text(PIN + "\n")
        pin_file.chmod(0o600)
        made = Hsm(folder, pin_file)
        with made.session() as session:
            session.generate_key(pkcs11.KeyType.AES, 256, label=KEY_LABEL, store=True, template={
                pkcs11.Attribute.EXTRACTABLE: False, pkcs11.Attribute.SENSITIVE: True})
        pkcs11.unload(MODULE)
        try:
            yield made
        finally:
            pkcs11.unload(MODULE)
