"""Every way to tamper with an audit log is detected, at the first bad record (file, line, seq).

The logs are made by the real writer (deterministic keys and clock); the tampering is what
someone with write access to the log file, but without the signing key, can do (auditkit).
Two cases come from journald's forward-secure sealing, whose verifier accepted them:
CVE-2023-31438 (a truncated log, sealing resumed after the cut) and CVE-2023-31439 (entries
after the last seal modified).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from encfs_pacs.audit import verify
from encfs_pacs.audit.verify import Problem, VerifyReport

from .auditkit import (
    encode,
    fixed_hooks,
    index_of,
    kind,
    lines_of,
    make_backing,
    open_fixed,
    rechain,
    records_of,
    sample_payloads,
    write_lines,
)

ATTACKER = Ed25519PrivateKey.from_private_bytes(b"\x42" * 32)


@dataclass
class Trail:
    path: Path
    anchor: bytes
    live: Path  # a copy of the log as a running mount leaves it: records after the last seal

    def lines(self) -> list[bytes]:
        return lines_of(self.path)

    def records(self) -> list[dict]:
        return records_of(self.path)


@pytest.fixture
def trail(tmp_path: Path) -> Trail:
    """One run: start, epoch, 30 records with a checkpoint every 4, stop. Plus a live copy."""
    backing = make_backing(tmp_path)
    hooks, _ = fixed_hooks()
    path = tmp_path / "logs" / "audit.log"
    writer = open_fixed(path, backing, hooks)
    payloads = sample_payloads() * 3
    for payload in payloads:
        writer.append(payload)
        writer.flush()
    live = tmp_path / "live.log"
    shutil.copyfile(path, live)
    writer.close()
    anchor = bytes.fromhex(json.loads((backing / ".encfs-pacs" / "audit-key.json").read_text())["anchor"])
    return Trail(path, anchor, live)


def problem(report: VerifyReport) -> Problem:
    assert not report.intact, report.lines()
    assert report.problem is not None
    return report.problem


def where(found: Problem) -> tuple[str, str | None, int | None, int | None]:
    return found.kind, found.file, found.line, found.seq


def first_payload_after(records: list[dict], start: int) -> int:
    return next(i for i in range(start, len(records)) if kind(records[i]) is None)


# ---------------------------------------------------------------------------- intact


def test_intact_and_anchored(trail: Trail) -> None:
    report = verify([trail.path], trail.anchor)
    assert report.intact and report.anchored and report.problem is None
    assert report.records == len(trail.lines()) and report.unsealed == 0
    assert report.lines()[0].startswith("intact")


def test_without_anchor_consistent_but_not_anchored(trail: Trail) -> None:
    report = verify([trail.path], None)
    assert report.intact and not report.anchored
    assert "NOT anchored" in report.lines()[0]
    assert report.anchor == trail.anchor.hex()  # shown, so the auditor can compare it


def test_a_whole_new_log_written_from_scratch_is_not_the_volumes(tmp_path: Path, trail: Trail) -> None:
    """Without the anchor a forger's log looks consistent; with it, it is foreign."""
    other = make_backing(tmp_path, "forger")
    hooks, _ = fixed_hooks(label=b"forger")
    forged = tmp_path / "forged.log"
    writer = open_fixed(forged, other, hooks)
    writer.append({"event": "open", "detail": "nothing to see"})
    writer.close()
    assert verify([forged], None).intact
    assert where(problem(verify([forged], trail.anchor))) == ("foreign", str(forged), 1, 0)


# ---------------------------------------------------------------------------- edits


def test_edited_record(trail: Trail) -> None:
    lines = trail.lines()
    i = index_of(trail.records(), lambda r: r["event"] == "deny")
    lines[i] = lines[i].replace(b'"user":"yamada"', b'"user":"orthanc"')
    write_lines(trail.path, lines)
    assert where(problem(verify([trail.path], trail.anchor))) == ("edited", str(trail.path), i + 1, i)


def test_edited_record_with_its_hash_recomputed(trail: Trail) -> None:
    records = trail.records()
    i = index_of(records, lambda r: r["event"] == "deny")
    records[i]["errno"] = None
    lines = trail.lines()
    lines[i] = encode(records[i])
    write_lines(trail.path, lines)
    found = problem(verify([trail.path], trail.anchor))
    assert where(found) == ("chain", str(trail.path), i + 2, i + 1)
    assert f"seq {i}" in found.message


def test_edited_record_with_the_whole_chain_recomputed(trail: Trail) -> None:
    records = trail.records()
    i = index_of(records, lambda r: r["event"] == "deny")
    records[i]["outcome"] = "allowed"
    write_lines(trail.path, rechain(records, i))
    seal = next(j for j in range(i, len(records)) if "sig" in records[j])
    found = problem(verify([trail.path], trail.anchor))
    assert where(found) == ("forged", str(trail.path), seal + 1, seal)


def test_whitespace_or_member_order_is_not_canonical(trail: Trail) -> None:
    lines = trail.lines()
    i = first_payload_after(trail.records(), 2)
    lines[i] = lines[i].replace(b'","', b'", "', 1)
    write_lines(trail.path, lines)
    found = problem(verify([trail.path], trail.anchor))
    assert where(found) == ("syntax", str(trail.path), i + 1, i)
    assert "canonical" in found.message


@pytest.mark.parametrize(("old", "new", "why"), [
    (b'"errno":null', b'"errno":1.5', "not an integer"),
    (b'"errno":null', b'"errno":NaN', "not JSON"),
    (b'"errno":null', b'"errno":null,"errno":null', "canonical"),
])
def test_values_json_cannot_hash_reproducibly(trail: Trail, old: bytes, new: bytes, why: str) -> None:
    records, lines = trail.records(), trail.lines()
    i = index_of(records, lambda r: r.get("errno", 0) is None)
    body = lines[i][:lines[i].rindex(b',"hash"')].replace(old, new, 1) + b"}"
    import hashlib
    lines[i] = body[:-1] + b',"hash":"' + hashlib.sha256(body).hexdigest().encode() + b'"}\n'
    write_lines(trail.path, lines)
    found = problem(verify([trail.path], trail.anchor))
    assert (found.kind, found.line) == ("syntax", i + 1) and why in found.message


def test_garbage_line(trail: Trail) -> None:
    lines = trail.lines()
    lines[5] = b"this is not json\n"
    write_lines(trail.path, lines)
    assert where(problem(verify([trail.path], trail.anchor)))[:3] == ("syntax", str(trail.path), 6)


# ---------------------------------------------------------------------------- deletions, order


def test_deleted_record(trail: Trail) -> None:
    lines = trail.lines()
    i = index_of(trail.records(), lambda r: r["event"] == "deny")
    del lines[i]
    write_lines(trail.path, lines)
    found = problem(verify([trail.path], trail.anchor))
    assert where(found) == ("deleted", str(trail.path), i + 1, i + 1)
    assert "1 record(s) deleted" in found.message


def test_deleted_record_renumbered_and_rechained(trail: Trail) -> None:
    records = trail.records()
    i = index_of(records, lambda r: r["event"] == "deny")
    del records[i]
    write_lines(trail.path, rechain(records, i, renumber=True))
    seal = next(j for j in range(i, len(records)) if "sig" in records[j])
    assert where(problem(verify([trail.path], trail.anchor))) == ("forged", str(trail.path), seal + 1, seal)


def test_reordered_records(trail: Trail) -> None:
    lines = trail.lines()
    i = first_payload_after(trail.records(), 3)
    lines[i], lines[i + 1] = lines[i + 1], lines[i]
    write_lines(trail.path, lines)
    found = problem(verify([trail.path], trail.anchor))
    assert where(found) == ("reordered", str(trail.path), i + 1, i + 1)
    assert f"seq {i} should come here but is at line {i + 2}" in found.message


def test_duplicated_record(trail: Trail) -> None:
    lines = trail.lines()
    lines.insert(8, lines[7])
    write_lines(trail.path, lines)
    assert where(problem(verify([trail.path], trail.anchor))) == ("reordered", str(trail.path), 9, 7)


# ---------------------------------------------------------------------------- truncation


def test_cut_mid_line(trail: Trail) -> None:
    data = trail.path.read_bytes()
    trail.path.write_bytes(data[:-30])
    found = problem(verify([trail.path], trail.anchor))
    assert where(found)[:3] == ("truncated", str(trail.path), len(trail.lines()))
    assert "incomplete" in found.message


def test_truncated_tail_is_unsealed(trail: Trail) -> None:
    """CVE-2023-31438: a verifier must not accept a log with its end cut off."""
    records, lines = trail.records(), trail.lines()
    cut = first_payload_after(records, len(records) - 4)  # keep some records after a seal
    last_seal = max(j for j in range(cut) if "sig" in records[j])
    write_lines(trail.path, lines[:cut + 1])
    found = problem(verify([trail.path], trail.anchor))
    assert where(found) == ("unsealed", str(trail.path), last_seal + 2, last_seal + 1)
    assert f"the {cut - last_seal - 1} after it are not sealed" in found.message


def test_truncated_exactly_at_a_checkpoint(trail: Trail) -> None:
    """Cut back to a seal: still not a stop seal, so not intact (only --live accepts it)."""
    records, lines = trail.records(), trail.lines()
    seal = index_of(records, lambda r: kind(r) == "checkpoint", nth=2)
    write_lines(trail.path, lines[:seal + 1])
    found = problem(verify([trail.path], trail.anchor))
    assert where(found) == ("truncated", str(trail.path), seal + 1, seal)
    live = verify([trail.path], trail.anchor, live=True)
    assert live.intact and live.unsealed == 0


def test_truncated_then_sealing_resumed_by_a_forger(trail: Trail) -> None:
    """CVE-2023-31438: cut back to a seal, append new history, seal it with another key."""
    records = trail.records()
    seal = index_of(records, lambda r: kind(r) == "checkpoint", nth=2)
    forged = [*records[:seal + 1], *records[seal + 1:seal + 4]]
    forged[seal + 1] = {**forged[seal + 1], "detail": "rewritten history"}
    forged.append({**records[seal], "time": records[-1]["time"]})  # a checkpoint, re-signed below
    write_lines(trail.path, rechain(forged, seal + 1, renumber=True, signer=ATTACKER))
    for live in (False, True):
        found = problem(verify([trail.path], trail.anchor, live=live))
        assert where(found) == ("forged", str(trail.path), len(forged), len(forged) - 1)


def test_live_log_unsealed_tail_is_counted_not_verified(trail: Trail) -> None:
    records = records_of(trail.live)
    last_seal = max(j for j, r in enumerate(records) if "sig" in r)
    tail = len(records) - last_seal - 1
    assert tail > 0
    report = verify([trail.live], trail.anchor, live=True)
    assert report.intact and report.unsealed == tail
    assert any(f"{tail} record(s) after the last seal are not yet sealed" in w for w in report.warnings)
    assert f"{tail} unsealed record(s)" in report.chains[0].ended
    # without --live the same log is not intact: it does not end with a stop seal
    found = problem(verify([trail.live], trail.anchor))
    assert where(found) == ("unsealed", str(trail.live), last_seal + 2, last_seal + 1)


def test_modified_unsealed_tail_is_never_reported_verified(trail: Trail) -> None:
    """CVE-2023-31439: entries after the last seal, edited and re-chained, must not pass as
    sealed: --live counts them as unsealed; without --live the log fails."""
    records = records_of(trail.live)
    last_seal = max(j for j, r in enumerate(records) if "sig" in r)
    records[last_seal + 1]["outcome"] = "rewritten"
    write_lines(trail.live, rechain(records, last_seal + 1))
    report = verify([trail.live], trail.anchor, live=True)
    assert report.unsealed == len(records) - last_seal - 1
    assert not any("intact" in line for line in report.lines()[1:])
    assert problem(verify([trail.live], trail.anchor)).kind == "unsealed"


def test_modified_sealed_record_in_a_live_log(trail: Trail) -> None:
    records = records_of(trail.live)
    i = first_payload_after(records, 3)
    records[i]["outcome"] = "rewritten"
    write_lines(trail.live, rechain(records, i))
    seal = next(j for j in range(i, len(records)) if "sig" in records[j])
    assert where(problem(verify([trail.live], trail.anchor, live=True))) == ("forged", str(trail.live),
                                                                            seal + 1, seal)


# ---------------------------------------------------------------------------- appended


def _appended(trail: Trail, extra: list[dict], signer: Ed25519PrivateKey | None = None) -> int:
    records = trail.records()
    n = len(records)
    records.extend(extra)
    write_lines(trail.path, rechain(records, n, renumber=True, signer=signer))
    return n


def test_record_appended_after_the_stop_seal(trail: Trail) -> None:
    records = trail.records()
    n = _appended(trail, [dict(records[3])])
    for live in (False, True):
        found = problem(verify([trail.path], trail.anchor, live=live))
        assert where(found) == ("appended", str(trail.path), n + 1, n)


def test_fake_resume_after_the_stop_seal(trail: Trail) -> None:
    records = trail.records()
    resume = {"event": "audit-resume", "time": records[-1]["time"], "mono_ns": 0,
              "audit": {"type": "resume", "clean": True, "unsealed": 0, "torn_bytes": 0}}
    n = _appended(trail, [resume, dict(records[3])])
    found = problem(verify([trail.path], trail.anchor, live=True))
    assert where(found) == ("forged", str(trail.path), n + 2, n + 1)


def test_fake_resume_and_epoch_signed_with_another_key(trail: Trail) -> None:
    records = trail.records()
    resume = {"event": "audit-resume", "time": records[-1]["time"], "mono_ns": 0,
              "audit": {"type": "resume", "clean": True, "unsealed": 0, "torn_bytes": 0}}
    epoch = next(r for r in records if kind(r) == "epoch")
    public = ATTACKER.public_key().public_bytes_raw().hex()
    fake_epoch = {**epoch, "audit": {"type": "epoch", "epoch": epoch["audit"]["epoch"] + 1, "public": public}}
    n = _appended(trail, [resume, fake_epoch, dict(records[3])], signer=ATTACKER)
    assert where(problem(verify([trail.path], trail.anchor, live=True))) == ("forged", str(trail.path),
                                                                            n + 2, n + 1)


def test_forged_checkpoint(trail: Trail) -> None:
    records = trail.records()
    i = first_payload_after(records, 3)
    checkpoint = next(r for r in records if kind(r) == "checkpoint")
    records.insert(i + 1, dict(checkpoint))
    write_lines(trail.path, rechain(records, i + 1, renumber=True, signer=ATTACKER))
    assert where(problem(verify([trail.path], trail.anchor))) == ("forged", str(trail.path), i + 2, i + 1)


def test_seal_naming_another_epoch(trail: Trail) -> None:
    records = trail.records()
    i = index_of(records, lambda r: kind(r) == "checkpoint")
    records[i]["audit"]["epoch"] = 7
    write_lines(trail.path, rechain(records, i))
    found = problem(verify([trail.path], trail.anchor))
    assert where(found) == ("forged", str(trail.path), i + 1, i) and "epoch 7" in found.message


def test_start_record_must_be_followed_by_its_epoch_seal(trail: Trail) -> None:
    records = trail.records()
    del records[1]  # the epoch seal after start
    write_lines(trail.path, rechain(records, 1, renumber=True))
    assert where(problem(verify([trail.path], trail.anchor))) == ("forged", str(trail.path), 2, 1)


# ---------------------------------------------------------------------------- files


@pytest.fixture
def rotated(tmp_path: Path) -> tuple[list[Path], bytes]:
    """A trail over 4+ files (rotation by size), oldest first."""
    backing = make_backing(tmp_path)
    hooks, _ = fixed_hooks()
    path = tmp_path / "logs" / "audit.log"
    writer = open_fixed(path, backing, hooks, rotate_bytes=3000)
    for payload in sample_payloads() * 2:
        writer.append(payload)
        writer.flush()
    writer.close()
    files = sorted(path.parent.glob("audit.log.*"), key=lambda p: records_of(p)[0]["seq"]) + [path]
    anchor = bytes.fromhex(json.loads((backing / ".encfs-pacs" / "audit-key.json").read_text())["anchor"])
    assert len(files) >= 4
    return files, anchor


def test_rotated_files_verify_in_any_order(rotated: tuple[list[Path], bytes]) -> None:
    files, anchor = rotated
    assert verify(files, anchor).intact
    assert verify(list(reversed(files)), anchor).intact


def test_missing_middle_file(rotated: tuple[list[Path], bytes]) -> None:
    files, anchor = rotated
    gone = files.pop(1)
    after = records_of(files[1])[0]
    found = problem(verify(files, anchor))
    assert where(found) == ("missing-file", str(files[1]), 1, after["seq"])
    assert gone.name in found.message
    assert f"records seq {records_of(gone)[0]['seq']}..{after['seq'] - 1} are missing" in found.message


def test_missing_first_file(rotated: tuple[list[Path], bytes]) -> None:
    files, anchor = rotated
    found = problem(verify(files[1:], anchor))
    assert where(found)[:3] == ("missing-file", str(files[1]), 1)


def test_missing_last_file(rotated: tuple[list[Path], bytes]) -> None:
    files, anchor = rotated
    found = problem(verify(files[:-1], anchor))
    assert found.kind == "missing-file" and found.file == str(files[-2])
    assert "next file was not given" in found.message


def test_rotated_file_cut_at_its_end(rotated: tuple[list[Path], bytes]) -> None:
    files, anchor = rotated
    write_lines(files[1], lines_of(files[1])[:-2])
    found = problem(verify(files, anchor))
    assert found.kind == "truncated" and found.file == str(files[1])
    assert "without a rotate seal" in found.message


def test_same_file_given_twice(rotated: tuple[list[Path], bytes], tmp_path: Path) -> None:
    files, anchor = rotated
    twin = tmp_path / "copy-of-first"
    shutil.copyfile(files[0], twin)
    assert problem(verify([*files, twin], anchor)).kind == "reordered"


def test_file_swapped_for_another_volumes(rotated: tuple[list[Path], bytes], tmp_path: Path) -> None:
    files, anchor = rotated
    other = make_backing(tmp_path, "other")
    hooks, _ = fixed_hooks(label=b"other volume", chain="ab" * 16)
    foreign = tmp_path / "other-logs" / "audit.log"
    writer = open_fixed(foreign, other, hooks, rotate_bytes=3000)
    for payload in sample_payloads() * 2:
        writer.append(payload)
        writer.flush()
    writer.close()
    swapped = sorted(foreign.parent.glob("audit.log.*"), key=lambda p: records_of(p)[0]["seq"])[1]
    shutil.copyfile(swapped, files[1])
    for expected in (anchor, None):
        found = problem(verify(files, expected))
        assert where(found) == ("foreign", str(files[1]), 1, records_of(swapped)[0]["seq"])


def test_empty_and_unreadable_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    assert problem(verify([empty], None)).kind == "syntax"
    assert problem(verify([tmp_path / "missing.log"], None)).kind == "unreadable"
    assert problem(verify([], None)).kind == "unreadable"


# ---------------------------------------------------------------------------- any change at all

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "audit-v1"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_byte_change_is_detected(tmp_path: Path, data: st.DataObject) -> None:
    """Flip, insert or delete bytes anywhere in any file: the result is never reported intact
    (and the verifier never crashes on it)."""
    names = ["audit.log.20260102T030405Z", "audit.log.20260102T030405Z-2", "audit.log"]
    anchor = bytes.fromhex((FIXTURE / "anchor.hex").read_text().strip())
    name = data.draw(st.sampled_from(names))
    original = (FIXTURE / name).read_bytes()
    at = data.draw(st.integers(0, len(original) - 1))
    how = data.draw(st.sampled_from(["flip", "insert", "delete"]))
    if how == "flip":
        changed = original[:at] + bytes([original[at] ^ data.draw(st.integers(1, 255))]) + original[at + 1:]
    elif how == "insert":
        changed = original[:at] + data.draw(st.binary(min_size=1, max_size=4)) + original[at:]
    else:
        changed = original[:at] + original[at + data.draw(st.integers(1, 40)):]
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    for n in names:
        (folder / n).write_bytes(changed if n == name else (FIXTURE / n).read_bytes())
    for live in (False, True):
        report = verify([folder / n for n in names], anchor, live=live)
        # --live may accept a cut-off end (a running mount's tail), but never as sealed
        tail_only = report.unsealed > 0 or any("incomplete last line" in w for w in report.warnings)
        assert not report.intact or (live and tail_only), (how, at, report.lines())
