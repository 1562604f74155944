"""A volume whose key is on a KMIP server: PyKMIP's own server on 127.0.0.1, driven by the CLI.

Each test starts a server in a subprocess (free port, SQLite database and certificates in the
test's folder: a CA, the server's certificate, a client certificate) and stops it at teardown.
The key is created and activated here with PyKMIP's client, as the key administrator would.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import (  # tests/conftest.py: shared helpers
    is_fuse_mounted,
    mount_with_kms,
    run_cli,
    write_kms_mount_config,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .test_cli import assert_clean_error

pytestmark = pytest.mark.integration

pytest.importorskip("kmip", reason="PyKMIP is not installed (pip install pykmip)")
START_TIMEOUT = 60


# ---------------------------------------------------------------------------- certificates


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(subject: str, key: Any, issuer: str, issuer_key: Any, *, ca: bool = False,
           usage: list[x509.ObjectIdentifier] | None = None, ip: str | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    if ip:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, item: Any) -> Path:
    if isinstance(item, x509.Certificate):
        path.write_bytes(item.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(item.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
        path.chmod(0o600)
    return path


def make_pki(folder: Path, ca_name: str = "hospital test CA",
             server_ip: str = "127.0.0.1") -> dict[str, Path]:
    """A CA with a server certificate for ``server_ip`` and a client certificate for this host."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = _issue(ca_name, ca_key, ca_name, ca_key, ca=True)
    server = _issue("kmip test server", server_key, ca_name, ca_key, usage=[ExtendedKeyUsageOID.SERVER_AUTH],
                    ip=server_ip)
    client = _issue("encfs-pacs-acq", client_key, ca_name, ca_key, usage=[ExtendedKeyUsageOID.CLIENT_AUTH])
    return {"ca": _write(folder / "ca.pem", ca), "server_cert": _write(folder / "server.crt", server),
            "server_key": _write(folder / "server.key", server_key),
            "cert": _write(folder / "client.crt", client), "key": _write(folder / "client.key", client_key)}


# ---------------------------------------------------------------------------- the server


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class KmipServer:
    folder: Path
    pki: dict[str, Path]
    port: int
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        conf = self.folder / "server.conf"
        (self.folder / "policies").mkdir(exist_ok=True)
        conf.write_text(
            "[server]\nhostname=127.0.0.1\n"
            f"port={self.port}\ncertificate_path={self.pki['server_cert']}\n"
            f"key_path={self.pki['server_key']}\nca_path={self.pki['ca']}\nauth_suite=TLS1.2\n"
            f"policy_path={self.folder / 'policies'}\nenable_tls_client_auth=True\n"
            f"logging_level=INFO\ndatabase_path={self.folder / 'kmip.sqlite'}\n")
        log = open(self.folder / "server.out", "ab")  # noqa: SIM115 - the child keeps it
        with log:
            self.process = subprocess.Popen(
                [sys.executable, "-W", "ignore", "-c",
                 "from kmip.services.server.server import main; main()",
                 "-f", str(conf), "-l", str(self.folder / "server.log")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the KMIP server exited: {self.output()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"the KMIP server did not listen within {START_TIMEOUT} s: {self.output()}")

    def stop(self) -> None:
        if self.process is None:
            return
        # The server forks helpers (its policy monitor): kill its whole process group, which
        # start() made its own. SIGKILL, as PyKMIP's graceful stop waits ~10 s for its accept
        # loop, and this throw-away server (SQLite in the test's folder) has nothing to save.
        with contextlib.suppress(ProcessLookupError):  # even if the main process died: its helpers
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=20)

    def output(self) -> str:
        return (self.folder / "server.out").read_text(errors="replace")[-3000:]

    def client(self, pki: dict[str, Path] | None = None) -> Any:
        from kmip.core import enums
        from kmip.pie.client import ProxyKmipClient

        pki = pki or self.pki
        return ProxyKmipClient(hostname="127.0.0.1", port=self.port, cert=str(pki["cert"]),
                               key=str(pki["key"]), ca=str(pki["ca"]), config_file="/dev/null",
                               kmip_version=enums.KMIPVersion.KMIP_1_2)

    def create_key(self) -> str:
        from kmip.core import enums

        with self.client() as client:
            uid = client.create(enums.CryptographicAlgorithm.AES, 256, name="encfs-pacs volume key",
                                cryptographic_usage_mask=[enums.CryptographicUsageMask.ENCRYPT,
                                                          enums.CryptographicUsageMask.DECRYPT])
            client.activate(uid)
        return str(uid)

    def revoke(self, uid: str) -> None:
        from kmip.core import enums

        with self.client() as client:
            client.revoke(enums.RevocationReasonCode.KEY_COMPROMISE, uid)

    def destroy(self, uid: str) -> None:
        from kmip.core import enums

        with self.client() as client:
            client.revoke(enums.RevocationReasonCode.CESSATION_OF_OPERATION, uid)
            client.destroy(uid)

    def uri(self, uid: str | None = None, pki: dict[str, Path] | None = None) -> str:
        pki = pki or self.pki
        where = f"//127.0.0.1:{self.port}/{uid}" if uid else ""
        return f"kmip:{where}?ca={pki['ca']}&cert={pki['cert']}&key={pki['key']}"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[KmipServer]:
    with _running(tmp_path / "kmip", make_pki(tmp_path / "kmip" / "pki")) as made:
        yield made


@contextlib.contextmanager
def _running(folder: Path, pki: dict[str, Path]) -> Iterator[KmipServer]:
    made = KmipServer(folder, pki, _free_port())
    try:
        made.start()
        yield made
    finally:
        made.stop()


@pytest.fixture
def volume(tmp_path: Path, server: KmipServer) -> tuple[Path, str]:
    uid = server.create_key()
    backing = tmp_path / "backing"
    run_cli("init", backing, "--kms", server.uri(uid))
    return backing, uid


# ---------------------------------------------------------------------------- tests


def test_init_mount_write_and_remount(volume: tuple[Path, str], server: KmipServer, mountpoint: Path) -> None:
    backing, uid = volume
    text = (backing / ".encfs-pacs" / "volume.json").read_text()
    assert '"algorithm": "kmip"' in text and f'"key_uid": "{uid}"' in text
    assert "client.key" not in text  # credentials stay on the host
    mount_with_kms(backing, mountpoint, server.uri())
    try:
        (mountpoint / "image.dcm").write_bytes(b"DICM" * 3000)
        run_cli("unmount", mountpoint)
        mount_with_kms(backing, mountpoint, server.uri())
        assert (mountpoint / "image.dcm").read_bytes() == b"DICM" * 3000
    finally:
        if is_fuse_mounted(mountpoint):
            run_cli("unmount", mountpoint, check=False)


def test_server_stopped_mounts_nothing(volume: tuple[Path, str], server: KmipServer,
                                       mountpoint: Path) -> None:
    backing, _ = volume
    server.stop()
    assert_clean_error(mount_with_kms(backing, mountpoint, server.uri(), check=False), 31, "cannot reach",
                       f"127.0.0.1:{server.port}")
    assert not is_fuse_mounted(mountpoint)


def test_revoked_key_mounts_nothing(volume: tuple[Path, str], server: KmipServer, mountpoint: Path) -> None:
    backing, uid = volume
    server.revoke(uid)
    assert_clean_error(mount_with_kms(backing, mountpoint, server.uri(), check=False), 32, "refused",
                       "Active")
    assert not is_fuse_mounted(mountpoint)


def test_destroyed_key_mounts_nothing(volume: tuple[Path, str], server: KmipServer, mountpoint: Path) -> None:
    backing, uid = volume
    server.destroy(uid)
    assert_clean_error(mount_with_kms(backing, mountpoint, server.uri(), check=False), 32, f"no key '{uid}'",
                       "recovery key")
    assert not is_fuse_mounted(mountpoint)


def test_foreign_client_certificate_mounts_nothing(volume: tuple[Path, str], server: KmipServer,
                                                   mountpoint: Path, tmp_path: Path) -> None:
    """A client certificate from another CA: the server refuses the TLS handshake."""
    backing, _ = volume
    other = make_pki(tmp_path / "other-pki", ca_name="someone else's CA")
    stranger = {"ca": server.pki["ca"], "cert": other["cert"], "key": other["key"]}
    result = mount_with_kms(backing, mountpoint, server.uri(pki=stranger), check=False)
    assert_clean_error(result, 32, "TLS", "client certificate")
    assert not is_fuse_mounted(mountpoint)


def test_server_not_vouched_for_by_the_ca_mounts_nothing(volume: tuple[Path, str], server: KmipServer,
                                                         mountpoint: Path, tmp_path: Path) -> None:
    """ca= names another CA: the server (or an impostor) is not trusted."""
    backing, _ = volume
    other = make_pki(tmp_path / "other-pki", ca_name="someone else's CA")
    wrong_ca = {"ca": other["ca"], "cert": server.pki["cert"], "key": server.pki["key"]}
    assert_clean_error(mount_with_kms(backing, mountpoint, server.uri(pki=wrong_ca), check=False), 32,
                       "does not vouch for", "ca=")
    assert not is_fuse_mounted(mountpoint)


def test_init_with_an_unknown_key_creates_nothing(server: KmipServer, tmp_path: Path) -> None:
    result = run_cli("init", tmp_path / "new", "--kms", server.uri("999"), check=False)
    assert_clean_error(result, 32, "no key '999'")
    assert not (tmp_path / "new").exists()


def test_a_server_certificate_for_another_name_is_refused(tmp_path: Path) -> None:
    """Signed by the right CA but naming another address (as any certificate of that CA could):
    not the KMIP server we asked for, so init sends it nothing to seal."""
    pki = make_pki(tmp_path / "kmip" / "pki", server_ip="127.0.0.2")
    with _running(tmp_path / "kmip", pki) as server:
        result = run_cli("init", tmp_path / "new", "--kms", server.uri("1"), check=False)
        assert_clean_error(result, 32, "does not name '127.0.0.1'")
        assert not (tmp_path / "new").exists()


def test_mount_config_file_kms_key(volume: tuple[Path, str], server: KmipServer, mountpoint: Path,
                                   tmp_path: Path) -> None:
    backing, _ = volume
    config = write_kms_mount_config(tmp_path, backing, mountpoint, server.uri())
    run_cli("mount", "--config", config)
    try:
        (mountpoint / "a.txt").write_text("through the config file")
        server.stop()  # the running mount has its key in memory
        assert (mountpoint / "a.txt").read_text() == "through the config file"
    finally:
        run_cli("unmount", mountpoint, check=False)
    assert_clean_error(run_cli("mount", "--config", config, check=False), 31, "cannot reach")
    assert not is_fuse_mounted(mountpoint)
