"""The auditor's CLI: `encfs-pacs audit anchor` and `encfs-pacs audit verify` (exit codes 0/2/23/24)."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest

from encfs_pacs import store
from encfs_pacs.audit import create_anchor, open_audit_log
from encfs_pacs.cli.main import main

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "audit-v1"
ANCHOR = (FIXTURE / "anchor.hex").read_text().strip()
SECRET = store.Secret("passphrase", b"unit tests: not a secret")


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def logs(tmp_path: Path) -> list[Path]:
    copy = tmp_path / "audit-v1"
    shutil.copytree(FIXTURE, copy)
    return sorted(copy.glob("audit.log*"))


def test_anchor_of_a_new_volume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    backing = tmp_path / "vol"
    store.create_volume(backing, SECRET, scrypt_log_n=10)
    code, out, err = run(capsys, "audit", "anchor", backing)
    assert code == 23 and "no audit anchor yet" in err and out == ""
    volume_key = bytes(32)  # the anchor needs no particular key to be shown
    anchor = create_anchor(backing, volume_key)
    code, out, _ = run(capsys, "audit", "anchor", backing)
    assert (code, out) == (0, anchor.hex() + "\n")
    code, out, _ = run(capsys, "audit", "anchor", backing, "--json")
    doc = json.loads(out)
    assert doc["anchor"] == anchor.hex() and base64.b64decode(doc["anchor_base64"]) == anchor


def test_anchor_of_something_that_is_not_a_volume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "audit", "anchor", tmp_path)
    assert code == 11 and "not an encfs-pacs volume" in err


def test_verify_intact_with_the_anchor_in_every_form(logs: list[Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    key_file = tmp_path / "anchor.txt"
    key_file.write_text(ANCHOR + "\n")
    b64 = base64.b64encode(bytes.fromhex(ANCHOR)).decode()
    for given in (ANCHOR, b64, str(key_file)):
        code, out, err = run(capsys, "audit", "verify", "--anchor", given, *logs)
        assert code == 0 and out.startswith("intact") and err == "", (given, out, err)
        assert "seq 0..32 in 3 file(s)" in out


def test_verify_without_anchor_warns(logs: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "audit", "verify", *logs)
    assert code == 0 and "NOT anchored" in out.splitlines()[0]
    assert f"anchor: {ANCHOR} (declared by the log itself)" in out


def test_verify_tampered(logs: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    target = next(p for p in logs if p.name == "audit.log.20260102T030405Z")  # the first file
    lines = target.read_bytes().splitlines(keepends=True)
    lines[4] = lines[4].replace(b'"outcome":"allowed"', b'"outcome":"denied"')
    target.write_bytes(b"".join(lines))
    code, out, err = run(capsys, "audit", "verify", "--anchor", ANCHOR, *logs)
    assert code == 24
    assert err.count("\n") == 1
    assert err.startswith(f"encfs-pacs: error: audit log not intact: {target}:5 (seq 4): ")
    code, out, _ = run(capsys, "audit", "verify", "--anchor", ANCHOR, "--json", *logs)
    report = json.loads(out)
    assert code == 24 and report["intact"] is False
    assert report["problem"] == {"kind": "edited", "file": str(target), "line": 5, "seq": 4,
                                 "message": report["problem"]["message"]}


def test_verify_wrong_anchor_is_tampered(logs: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "audit", "verify", "--anchor", "ab" * 32, *logs)
    assert code == 24 and "another audit trail" in err


def test_verify_live_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    backing = tmp_path / "vol"
    store.create_volume(backing, SECRET, scrypt_log_n=10)
    anchor = create_anchor(backing, bytes(32))
    path = tmp_path / "audit.log"
    writer = open_audit_log(path, backing, bytes(32), checkpoint_interval=600)
    try:
        writer.append({"event": "open"})
        writer.flush()
        code, out, err = run(capsys, "audit", "verify", "--anchor", anchor.hex(), "--live", path)
        assert code == 0 and "1 record(s) after the last seal are not yet sealed" in out
        code, _, err = run(capsys, "audit", "verify", "--anchor", anchor.hex(), path)
        assert code == 24 and "without a stop seal" in err and "--live" in err
    finally:
        writer.close()
    code, out, _ = run(capsys, "audit", "verify", "--anchor", anchor.hex(), path)
    assert code == 0


def test_bad_anchor_is_a_usage_error(logs: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "audit", "verify", "--anchor", "not-a-key", *logs)
    assert code == 2 and "64 hex digits" in err


def test_help_shows_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("verify", "anchor"):
        code, out, _ = run(capsys, "audit", command, "--help")
        assert code == 0 and "Example" in out
