"""Forwarding to a real rsyslog (issue 5 "Forwarding", issue 9 "Central audit").

Each test starts its own rsyslogd on 127.0.0.1 (tests/syslog_collector.py), mounts a volume
with ``--syslog`` pointing at it, works on files, unmounts, and compares the collector's file
with the local audit log line for line. Then ``audit collect`` rebuilds the host's files from
the collector's copy, ``audit verify`` accepts them with the volume's anchor, and one edited
line on the collector makes verify fail.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import OPEN_POLICY, PASSPHRASE, TEST_SCRYPT_LOG_N, Mounted, run_cli, write_policy
from syslog_collector import Collector, free_port

pytestmark = pytest.mark.integration


def work_on_files(mountpoint: Path) -> None:
    """Creates, reads, renames, deletes: opens, releases, renames and deletes in the trail."""
    for n in range(5):
        (mountpoint / f"image-{n}.dcm").write_bytes(os.urandom(1000 + n))
    (mountpoint / "Ünïcode \"quoted\" ]name.dcm").write_bytes(b"x" * 100)
    for n in range(5):
        (mountpoint / f"image-{n}.dcm").read_bytes()
    (mountpoint / "image-0.dcm").rename(mountpoint / "renamed.dcm")
    (mountpoint / "image-1.dcm").unlink()


def mount_with_syslog(tmp_path: Path, backing: Path, passphrase_file: Path, name: str,
                      *extra: str) -> Mounted:
    mountpoint = tmp_path / f"mnt-{name}"
    mountpoint.mkdir()
    policy = write_policy(tmp_path / f"policy-{name}.toml", OPEN_POLICY.format(uid=os.geteuid()))
    return Mounted(backing=backing, mountpoint=mountpoint, log_file=tmp_path / f"daemon-{name}.log",
                   passphrase_file=passphrase_file, policy_file=policy, extra_args=extra)


def run_mounted(m: Mounted, work: Callable[[Path], None]) -> None:
    try:
        m.mount()
        work(m.mountpoint)
    finally:
        if m.is_mounted:
            m.unmount()
    log = m.log()
    assert "Traceback" not in log and "internal error" not in log, log


def anchor_of(backing: Path) -> str:
    return run_cli("audit", "anchor", backing).stdout.strip()


@pytest.mark.parametrize("scheme", ["udp", "tcp"])
def test_every_audit_record_reaches_rsyslog(scheme: str, rsyslog: Collector, tmp_path: Path, volume: Path,
                                            passphrase_file: Path) -> None:
    host = f"pacs-acq-{scheme}"
    m = mount_with_syslog(tmp_path, volume, passphrase_file, scheme, "--syslog", rsyslog.target(scheme),
                          "--syslog-hostname", host)
    run_mounted(m, work_on_files)

    assert m.audit_log is not None
    local = m.audit_log.read_bytes().split(b"\n")[:-1]
    assert b'"event":"audit-stop"' in local[-1]
    rsyslog.wait_for(lambda: len(rsyslog.messages(host)) >= len(local), f"{len(local)} audit messages")
    # Every local record, seals and control records included, byte for byte and in order.
    assert rsyslog.messages(host) == local
    assert any(b'"event":"rename"' in line for line in local) and any(b"\xc3\x9cn\xc3\xafcode" in line
                                                                      for line in local)
    # The daemon log goes to the same collector, told apart by its MSGID.
    assert any(b"forwarding the audit trail" in msg for msg in rsyslog.messages(host, "log"))

    # The collector's copy verifies on its own, with the volume's anchor.
    central = tmp_path / "central"
    out = run_cli("audit", "collect", rsyslog.out, central).stdout
    assert "audit records from 1 host(s)" in out, out
    files = sorted((central / host).iterdir())
    run_cli("audit", "verify", "--anchor", anchor_of(volume), *files)
    assert b"".join(f.read_bytes() for f in files) == m.audit_log.read_bytes()

    # One record edited on the collector: verify names it.
    tampered = tmp_path / "tampered.log"
    text = rsyslog.out.read_bytes()
    assert text.count(b"renamed.dcm") >= 1
    tampered.write_bytes(text.replace(b"renamed.dcm", b"renamxd.dcm", 1))
    run_cli("audit", "collect", tampered, tmp_path / "central-tampered")
    result = run_cli("audit", "verify", "--anchor", anchor_of(volume),
                     *sorted((tmp_path / "central-tampered" / host).iterdir()), check=False)
    assert result.returncode == 24 and "edited" in (result.stdout + result.stderr), result


def test_two_hosts_one_collector_one_merged_view(rsyslog: Collector, tmp_path: Path, volume: Path,
                                                 passphrase_file: Path) -> None:
    """Issue 9: ACQ and WAS forward to one collector; each host's chain verifies; query merges."""
    was_volume = tmp_path / "backing-was"
    run_cli("init", was_volume, "--passphrase-file", passphrase_file, "--scrypt-log-n", TEST_SCRYPT_LOG_N)
    acq = mount_with_syslog(tmp_path, volume, passphrase_file, "acq", "--syslog", rsyslog.target("tcp"),
                            "--syslog-hostname", "acq")
    was = mount_with_syslog(tmp_path, was_volume, passphrase_file, "was", "--syslog", rsyslog.target("udp"),
                            "--syslog-hostname", "was")
    try:
        acq.mount()
        was.mount()
        (acq.mountpoint / "from-acq.dcm").write_bytes(b"a" * 10)
        (was.mountpoint / "from-was.dcm").write_bytes(b"w" * 10)
    finally:
        for m in (acq, was):
            if m.is_mounted:
                m.unmount()
    for m, host in ((acq, "acq"), (was, "was")):
        assert m.audit_log is not None
        count = m.audit_log.read_bytes().count(b"\n")
        rsyslog.wait_for(lambda host=host, count=count: len(rsyslog.messages(host)) >= count,
                         f"{host}'s trail")
    central = tmp_path / "central"
    run_cli("audit", "collect", rsyslog.out, central)
    for backing, host in ((volume, "acq"), (was_volume, "was")):
        run_cli("audit", "verify", "--anchor", anchor_of(backing), *sorted((central / host).iterdir()))
    merged = run_cli("audit", "query", *sorted(central.glob("*/*"))).stdout
    rows = [line.split() for line in merged.splitlines()[1:]]
    assert {"acq", "was"} <= {row[0] for row in rows}
    creates = {row[0]: row for row in rows if "create" in row}
    assert "/from-acq.dcm" in creates["acq"] and "/from-was.dcm" in creates["was"]
    assert PASSPHRASE not in rsyslog.out.read_text(errors="replace")  # nothing secret is forwarded


def test_dead_collector_neither_blocks_nor_fails_the_mount(tmp_path: Path, volume: Path,
                                                           passphrase_file: Path) -> None:
    """No collector listens: file operations go on, the local trail is complete and says how
    many messages the collector missed (a syslog-dropped record before the stop seal)."""
    port = free_port(socket.SOCK_STREAM)  # nothing listens there
    m = mount_with_syslog(tmp_path, volume, passphrase_file, "dead", "--syslog", f"tcp://127.0.0.1:{port}")
    started = time.monotonic()
    run_mounted(m, work_on_files)
    assert time.monotonic() - started < 30  # the unmount waits a few seconds at most for the collector
    assert m.audit_log is not None
    run_cli("audit", "verify", "--anchor", anchor_of(volume), m.audit_log)
    records = [json.loads(line) for line in m.audit_log.read_text().splitlines()]
    (dropped,) = [r for r in records if r["event"] == "syslog-dropped"]
    # Everything before it never reached the collector (the daemon log lines count too).
    assert dropped["dropped"] >= dropped["seq"] + 1 and dropped["target"] == f"tcp://127.0.0.1:{port}"
    assert "unreachable" in m.log()
