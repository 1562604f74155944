"""The process allow-list through a real mount, with real, different programs.

Programs: two copies of a Python agent script (agent.py) run by the same interpreter — the
allow-list tells them apart by command line, as it must for java/python PACS; copies of
/usr/bin/cat pinned by SHA-256; the system's own cat, dd, rm, mv and ls as the outsiders.
The test process itself matches no rule: it sees the mount only as a denied program would.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Mounted, run_cli  # tests/conftest.py: shared helpers

pytestmark = pytest.mark.integration

PYTHON = os.path.realpath(sys.executable)


class Agent:
    """One agent program: a copy of agent.py with its own name (its identity for the policy)."""

    def __init__(self, script: Path) -> None:
        self.script = script
        self.calls = 0

    def _actions_argument(self, actions: tuple[dict, ...]) -> str:
        self.calls += 1
        path = self.script.with_name(f"{self.script.stem}-actions-{self.calls}.json")
        path.write_text(json.dumps(list(actions)))
        path.chmod(0o644)
        return f"@{path}"

    def run(self, *actions: dict, uid: int | None = None) -> list[dict]:
        command = [PYTHON, str(self.script), self._actions_argument(actions)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False,
                                user=uid, group=uid, extra_groups=[] if uid is not None else None)
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]

    def start(self, *actions: dict) -> subprocess.Popen[str]:
        return subprocess.Popen([PYTHON, str(self.script), self._actions_argument(actions)], text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def step(process: subprocess.Popen[str]) -> dict:
    """Let a started agent pass its next 'wait' and return the result line that follows."""
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write("\n")
    process.stdin.flush()
    lines = [process.stdout.readline(), process.stdout.readline()]
    if not all(lines):
        process.kill()
        raise AssertionError(f"agent died: {process.stderr.read() if process.stderr else ''}")
    assert json.loads(lines[0]) == {"ok": True}  # the wait itself
    return json.loads(lines[1])


def denied(result: dict) -> bool:
    return result == {"ok": False, "errno": errno.EACCES}


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    folder.chmod(0o755)
    tmp_path.chmod(0o755)  # the unprivileged-user test runs programs from here
    return folder


@pytest.fixture
def pacs(bin_dir: Path) -> Agent:
    script = bin_dir / "pacs_agent.py"
    shutil.copy(Path(__file__).with_name("agent.py"), script)
    return Agent(script)


@pytest.fixture
def rogue(bin_dir: Path) -> Agent:
    script = bin_dir / "rogue_agent.py"
    shutil.copy(Path(__file__).with_name("agent.py"), script)
    return Agent(script)


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    return tmp_path / "etc" / "policy.toml"


def allow(policy: Path, *args: str | Path) -> None:
    run_cli("allow", "add", "--policy", policy, *args)


def allow_pacs(policy: Path, *args: str) -> None:
    """The PACS: this interpreter running pacs_agent.py (hash-pinned interpreter + argv)."""
    allow(policy, "--id", "pacs", "--exe", PYTHON, "--args", "* */pacs_agent.py *", *args)


def data(n: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(n))


def store_images(pacs: Agent, mnt: Path, count: int = 6) -> dict[str, bytes]:
    images = {f"study/img{i}.dcm": data(70_000 + i * 1000, seed=i) for i in range(count)}
    results = pacs.run({"op": "mkdir", "path": str(mnt / "study")},
                       *({"op": "create_new", "path": str(mnt / name), "data": content.hex()}
                         for name, content in images.items()))
    assert all(r["ok"] for r in results), results
    return images


def cat(program: str | Path, path: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(program), str(path)], capture_output=True, timeout=60, check=False)


# ---------------------------------------------------------------------------- basic allow / deny


def test_allowed_program_works_and_others_are_denied_every_operation(
        policy: Path, pacs: Agent, rogue: Agent, mount_volume: Callable[..., Mounted]) -> None:
    allow_pacs(policy)
    m = mount_volume(policy)
    mnt = m.mountpoint
    images = store_images(pacs, mnt)
    target = str(mnt / "study/img0.dcm")
    assert pacs.run({"op": "read", "path": target})[0]["data"] == images["study/img0.dcm"].hex()

    results = rogue.run(
        {"op": "read", "path": target},
        {"op": "write", "path": target, "data": "00"},
        {"op": "create_new", "path": str(mnt / "study/new.dcm"), "data": "00"},
        {"op": "unlink", "path": target},
        {"op": "rename", "path": target, "to": target + ".locked"},
        {"op": "truncate", "path": target},
        {"op": "list", "path": str(mnt / "study")},
        {"op": "list", "path": str(mnt)},
        {"op": "stat", "path": target},
        {"op": "chmod", "path": target, "mode": 0o600},
        {"op": "mkdir", "path": str(mnt / "x")},
        {"op": "rmdir", "path": str(mnt / "study")},
    )
    assert all(denied(r) for r in results), results
    # The test process matches no rule either.
    with pytest.raises(PermissionError):
        os.listdir(mnt)
    for tool in (["cat", target], ["dd", f"if={target}", "of=/dev/null"], ["rm", "-f", target],
                 ["mv", target, target + ".x"], ["ls", str(mnt / "study")]):
        result = subprocess.run(tool, capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode != 0 and "Permission denied" in result.stderr, (tool, result.stderr)
    # Nothing changed: every image is still there, byte for byte.
    listing = pacs.run({"op": "list", "path": str(mnt / "study")})[0]["names"]
    assert listing == sorted(name.split("/")[1] for name in images)
    for name, content in images.items():
        assert pacs.run({"op": "read", "path": str(mnt / name)})[0]["data"] == content.hex()


def test_operations_are_granted_one_by_one(policy: Path, pacs: Agent, rogue: Agent, bin_dir: Path,
                                           mount_volume: Callable[..., Mounted]) -> None:
    """A viewer with read,list may read and list but not write, delete or rename."""
    allow_pacs(policy)
    allow(policy, "--id", "viewer", "--exe", PYTHON, "--args", "* */rogue_agent.py *", "--ops", "read,list")
    m = mount_volume(policy)
    store_images(pacs, m.mountpoint, count=1)
    target = str(m.mountpoint / "study/img0.dcm")
    read, listing, write, delete, rename = rogue.run(
        {"op": "read", "path": target}, {"op": "list", "path": str(m.mountpoint / "study")},
        {"op": "write", "path": target, "data": "00"}, {"op": "unlink", "path": target},
        {"op": "rename", "path": target, "to": target + ".x"})
    assert read["ok"] and listing["names"] == ["img0.dcm"]
    assert denied(write) and denied(delete) and denied(rename)


def test_pinned_executable_copy_allowed_system_binary_denied_and_replaced_binary_denied(
        policy: Path, pacs: Agent, bin_dir: Path, mount_volume: Callable[..., Mounted]) -> None:
    viewer = bin_dir / "viewer-cat"
    shutil.copy("/usr/bin/cat", viewer)
    allow_pacs(policy)
    allow(policy, "--id", "viewer", "--exe", viewer, "--ops", "read,list")
    m = mount_volume(policy)
    images = store_images(pacs, m.mountpoint, count=1)
    target = m.mountpoint / "study/img0.dcm"
    assert cat(viewer, target).stdout == images["study/img0.dcm"]
    assert b"Permission denied" in cat("/usr/bin/cat", target).stderr  # same code, other path
    # Replace the allowed program's content (a new file at the same path, as an attacker or an
    # unvetted update would): the pinned hash no longer matches.
    replacement = bin_dir / "replacement"
    shutil.copy("/usr/bin/cat", replacement)
    with open(replacement, "ab") as out:
        out.write(b"\0trojan")
    os.replace(replacement, viewer)
    result = cat(viewer, target)
    assert result.returncode != 0 and b"Permission denied" in result.stderr
    assert images["study/img0.dcm"] not in result.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run programs as other users")
def test_user_rule_allows_one_user_and_denies_another(policy: Path, pacs: Agent,
                                                      mount_volume: Callable[..., Mounted]) -> None:
    allow_pacs(policy)
    allow(policy, "--id", "nobody-reader", "--user", "65534", "--ops", "read,list")
    m = mount_volume(policy)
    images = store_images(pacs, m.mountpoint, count=1)
    pacs.run({"op": "chmod", "path": str(m.mountpoint), "mode": 0o755},
             {"op": "chmod", "path": str(m.mountpoint / "study"), "mode": 0o755})
    # pytest's temporary folders are root-only: hand the other users the mount's root as an
    # open descriptor (an O_PATH open asks the file system nothing, so no rule is needed).
    root = os.open(m.mountpoint, os.O_PATH | os.O_DIRECTORY)
    try:
        def cat_as(uid: int) -> subprocess.CompletedProcess[bytes]:
            return subprocess.run(["/usr/bin/cat", f"/proc/self/fd/{root}/study/img0.dcm"], user=uid,
                                  group=uid, extra_groups=[], pass_fds=(root,), capture_output=True,
                                  timeout=60, check=False)
        as_nobody, as_daemon_user = cat_as(65534), cat_as(1)
    finally:
        os.close(root)
    assert as_nobody.stdout == images["study/img0.dcm"], as_nobody.stderr
    assert as_daemon_user.returncode != 0 and b"Permission denied" in as_daemon_user.stderr


# ---------------------------------------------------------------------------- ciphertext view, page cache


def test_ciphertext_view_reads_the_stored_bytes(policy: Path, pacs: Agent, bin_dir: Path, volume: Path,
                                                mount_volume: Callable[..., Mounted]) -> None:
    backup = bin_dir / "backup-cat"
    shutil.copy("/usr/bin/cat", backup)
    allow_pacs(policy)
    allow(policy, "--id", "backup", "--exe", backup, "--view", "ciphertext")
    m = mount_volume(policy)
    images = store_images(pacs, m.mountpoint, count=2)
    for name, content in images.items():
        raw = cat(backup, m.mountpoint / name).stdout
        assert raw == (volume / name).read_bytes()
        assert content not in raw and raw[:4] == b"EPAC"
    # read-only: a ciphertext-view program cannot write
    result = subprocess.run(["sh", "-c", f"exec {backup} /dev/null > '{m.mountpoint}/study/img0.dcm'"],
                            capture_output=True, check=False)
    assert result.returncode != 0
    assert pacs.run({"op": "read", "path": str(m.mountpoint / "study/img0.dcm")})[0]["data"] == \
        images["study/img0.dcm"].hex()


def test_cached_plaintext_never_reaches_a_ciphertext_or_denied_reader(
        policy: Path, pacs: Agent, rogue: Agent, volume: Path, mount_volume: Callable[..., Mounted]) -> None:
    """The page cache is per file, not per process. The ciphertext reader opens first; then the
    PACS opens and reads (filling the cache with plaintext); then the ciphertext reader reads
    through its already-open handle. Without direct I/O on that handle the kernel would serve
    it the PACS's cached plaintext."""
    allow_pacs(policy)
    allow(policy, "--id", "backup", "--exe", PYTHON, "--args", "* */rogue_agent.py *",
          "--view", "ciphertext")
    m = mount_volume(policy)
    images = store_images(pacs, m.mountpoint, count=1)
    target = str(m.mountpoint / "study/img0.dcm")
    plaintext = images["study/img0.dcm"]
    backup = rogue.start({"op": "open", "path": target, "name": "f"}, {"op": "wait"},
                         {"op": "pread", "name": "f", "size": 1 << 20}, {"op": "close", "name": "f"})
    try:
        assert backup.stdout is not None
        assert json.loads(backup.stdout.readline()) == {"ok": True}  # opened
        reader = pacs.start({"op": "open", "path": target, "name": "f"},
                            {"op": "pread", "name": "f", "size": 1 << 20}, {"op": "wait"},
                            {"op": "close", "name": "f"})
        assert reader.stdout is not None
        assert json.loads(reader.stdout.readline()) == {"ok": True}
        assert json.loads(reader.stdout.readline())["data"] == plaintext.hex()  # now cached
        seen = bytes.fromhex(step(backup)["data"])
        step(reader)
        reader.wait(timeout=30)
    finally:
        backup.kill()
    assert seen == (volume / "study/img0.dcm").read_bytes()
    assert plaintext[:4096] not in seen


# ---------------------------------------------------------------------------- ransomware


def test_ransomware_walk_changes_nothing(policy: Path, pacs: Agent, rogue: Agent,
                                         mount_volume: Callable[..., Mounted]) -> None:
    allow_pacs(policy)
    m = mount_volume(policy)
    images = store_images(pacs, m.mountpoint, count=8)
    names = [str(m.mountpoint / name) for name in images]
    attack = [{"op": "walk", "path": str(m.mountpoint)}]
    for path in names:  # what ransomware does to each file it can name
        attack += [{"op": "read", "path": path},
                   {"op": "write", "path": path, "data": "de" * 64},
                   {"op": "create_new", "path": path + ".locked", "data": "de" * 64},
                   {"op": "rename", "path": path, "to": path + ".locked"},
                   {"op": "truncate", "path": path},
                   {"op": "unlink", "path": path}]
    attack.append({"op": "rmdir", "path": str(m.mountpoint / "study")})
    results = rogue.run(*attack)
    assert all(denied(r) for r in results), [r for r in results if not denied(r)]
    m.unmount()
    m.mount()
    for name, content in images.items():
        assert pacs.run({"op": "read", "path": str(m.mountpoint / name)})[0]["data"] == content.hex()
    assert pacs.run({"op": "list", "path": str(m.mountpoint / "study")})[0]["names"] == sorted(
        name.split("/")[1] for name in images)


def test_write_once_lets_the_pacs_store_but_not_rewrite(policy: Path, pacs: Agent,
                                                        mount_volume: Callable[..., Mounted]) -> None:
    # Images are stored once: the PACS may create (and finish, within the grace period) files,
    # but not overwrite, truncate, rename or delete them later.
    run_cli("allow", "add", "--policy", policy, "--id", "pacs", "--exe", PYTHON,
            "--args", "* */pacs_agent.py *", "--write-once")
    text = policy.read_text().replace("write_once = true", "write_once = true\nwrite_once_grace_seconds = 0")
    policy.write_text(text)
    m = mount_volume(policy)
    store_images(pacs, m.mountpoint, count=1)
    target = str(m.mountpoint / "study/img0.dcm")
    results = pacs.run({"op": "read", "path": target},
                       {"op": "create_new", "path": str(m.mountpoint / "study/img1.dcm"), "data": "01"},
                       {"op": "write", "path": target, "data": "00"},
                       {"op": "truncate", "path": target},
                       {"op": "rename", "path": target, "to": target + ".x"},
                       {"op": "unlink", "path": target})
    assert results[0]["ok"] and results[1]["ok"]
    assert all(denied(r) for r in results[2:]), results


def test_rate_guard_blocks_a_process_that_deletes_too_fast(policy: Path, pacs: Agent, rogue: Agent,
                                                           mount_volume: Callable[..., Mounted]) -> None:
    allow_pacs(policy)
    allow(policy, "--id", "cleaner", "--exe", PYTHON, "--args", "* */rogue_agent.py *",
          "--max-changes", "3", "--window", "60")
    m = mount_volume(policy)
    images = store_images(pacs, m.mountpoint, count=6)
    paths = [str(m.mountpoint / name) for name in images]
    results = rogue.run(*({"op": "unlink", "path": p} for p in paths), {"op": "read", "path": paths[-1]})
    assert [r["ok"] for r in results[:3]] == [True, True, True]
    assert all(denied(r) for r in results[3:]), results  # blocked, reads included
    assert "rate guard" in m.log()
    # a new process of the same program starts with a clean slate
    assert rogue.run({"op": "read", "path": paths[-1]})[0]["ok"]


# ---------------------------------------------------------------------------- reload, learn


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_policy_edits_take_effect_without_unmounting(policy: Path, pacs: Agent, rogue: Agent,
                                                     mount_volume: Callable[..., Mounted]) -> None:
    allow_pacs(policy)
    m = mount_volume(policy)
    store_images(pacs, m.mountpoint, count=1)
    target = str(m.mountpoint / "study/img0.dcm")
    assert denied(rogue.run({"op": "read", "path": target})[0])
    allow(policy, "--id", "rogue-now-ok", "--exe", PYTHON, "--args", "* */rogue_agent.py *")
    assert wait_until(lambda: rogue.run({"op": "read", "path": target})[0]["ok"])
    # A broken edit is refused with file and line; the previous policy stays in force.
    policy.write_text(policy.read_text() + "\n[[rule]]\nid = \"broken\"\nops = [\"fly\"]\n")
    assert wait_until(lambda: "rejected" in m.log())
    assert "line" in m.log() and "'fly'" in m.log()
    assert rogue.run({"op": "read", "path": target})[0]["ok"]
    assert pacs.run({"op": "read", "path": target})[0]["ok"]
    # SIGHUP reloads too (and does not unmount, which is what libfuse would do by default).
    run_cli("allow", "remove", "--policy", policy, "broken", check=False)
    text = policy.read_text()
    text = text[:text.index("\n[[rule]]\nid = \"broken\"")] if "id = \"broken\"" in text else text
    stamp = os.stat(policy)
    policy.write_text(text.replace('id = "rogue-now-ok"', 'id = "rogue-now-ok"\nview = "deny"'))
    os.utime(policy, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    daemon_pid = _daemon_pid(m)
    os.kill(daemon_pid, signal.SIGHUP)
    assert wait_until(lambda: denied(rogue.run({"op": "read", "path": target})[0]))
    assert m.is_mounted


def _daemon_pid(m: Mounted) -> int:
    result = subprocess.run(["fuser", "-m", str(m.mountpoint)], capture_output=True, text=True, check=False)
    for line in m.log().splitlines():
        if "encfs-pacs[" in line:
            return int(line.split("encfs-pacs[", 1)[1].split("]", 1)[0])
    raise AssertionError(f"daemon pid not found in log: {result.stderr}")


def test_learn_mode_denies_nothing(policy: Path, pacs: Agent, rogue: Agent,
                                   mount_volume: Callable[..., Mounted]) -> None:
    allow_pacs(policy)
    m = mount_volume(policy, "--learn")
    store_images(pacs, m.mountpoint, count=1)
    target = str(m.mountpoint / "study/img0.dcm")
    results = rogue.run({"op": "read", "path": target}, {"op": "list", "path": str(m.mountpoint / "study")})
    assert all(r["ok"] for r in results), results


def test_break_glass_grant_expires_by_itself(policy: Path, pacs: Agent, bin_dir: Path,
                                             mount_volume: Callable[..., Mounted]) -> None:
    emergency = bin_dir / "emergency-cat"
    shutil.copy("/usr/bin/cat", emergency)
    allow_pacs(policy)
    m = mount_volume(policy)
    images = store_images(pacs, m.mountpoint, count=1)
    target = m.mountpoint / "study/img0.dcm"
    assert cat(emergency, target).returncode != 0
    result = run_cli("allow", "grant", "--policy", policy, "--exe", emergency, "--for", "1m",
                     "--reason", "INC-1 radiologist needs the study now")
    assert "expires by itself" in result.stdout
    assert wait_until(lambda: cat(emergency, target).stdout == images["study/img0.dcm"])
    # Simulate the clock passing the expiry: rewrite the rule's end into the past.
    text = policy.read_text()
    start = text.index("expires = ") + len("expires = ")
    end = text.index("\n", start)
    policy.write_text(text[:start] + "2020-01-01T00:00:00Z" + text[end:])
    assert wait_until(lambda: cat(emergency, target).returncode != 0)


def test_denied_unlink_of_a_file_open_elsewhere_is_eacces(policy: Path, pacs: Agent, rogue: Agent,
                                                          mount_volume: Callable[..., Mounted]) -> None:
    """libfuse hides a file that is unlinked while open by renaming it, after probing for a free
    hidden name in the caller's name: the probe must not be what refuses (EBUSY)."""
    allow_pacs(policy)
    m = mount_volume(policy)
    store_images(pacs, m.mountpoint, count=1)
    target = str(m.mountpoint / "study/img0.dcm")
    holder = pacs.start({"op": "open", "path": target, "name": "f"}, {"op": "wait"},
                        {"op": "close", "name": "f"})
    try:
        assert holder.stdout is not None
        assert json.loads(holder.stdout.readline()) == {"ok": True}
        result = rogue.run({"op": "unlink", "path": target})[0]
        step(holder)
    finally:
        holder.kill()
    assert denied(result), result
    assert pacs.run({"op": "stat", "path": target})[0]["ok"]


def test_learn_mode_records_feed_suggest_and_simulate(policy: Path, pacs: Agent, rogue: Agent,
                                                      mount_volume: Callable[..., Mounted],
                                                      tmp_path: Path) -> None:
    """The admin's path to a policy: mount --learn, let the programs work, turn the records into
    rules (policy suggest), check a tightened policy against the same records (policy simulate)."""
    allow_pacs(policy)
    m = mount_volume(policy, "--learn")
    store_images(pacs, m.mountpoint, count=2)
    target = str(m.mountpoint / "study/img0.dcm")
    assert all(r["ok"] for r in rogue.run({"op": "list", "path": str(m.mountpoint / "study")},
                                          {"op": "read", "path": target}))
    m.unmount()
    assert m.audit_log is not None
    learned = [r for r in m.audit_records() if r.get("outcome") == "learn-denied"]
    assert learned and all(r["program"]["argv"][1].endswith("rogue_agent.py") for r in learned)
    assert any(r["event"] == "open" and r["object"].get("path") == "/study/img0.dcm" for r in learned)

    suggestion = run_cli("policy", "suggest", m.audit_log).stdout
    assert "[[rule]]" in suggestion and f'exe = "{PYTHON}"' in suggestion
    proposed = tmp_path / "proposed.toml"
    proposed.write_text(policy.read_text() + "\n" + suggestion)
    validated = run_cli("policy", "validate", proposed)
    assert "valid" in validated.stdout
    # The suggested rule names the interpreter only: it would also let the rogue in. Simulating
    # the current (strict) policy against the records lists exactly what learn mode let through.
    simulation = run_cli("policy", "simulate", "--policy", policy, m.audit_log, "--json")
    changes = json.loads(simulation.stdout)["changes"]
    assert changes == [] or all(c["kind"] == "newly denied" for c in changes)
    strict = run_cli("policy", "simulate", "--policy", proposed, m.audit_log, "--json")
    assert json.loads(strict.stdout)["replayed"] > 0


def test_audit_records_name_program_patient_and_outcome(policy: Path, pacs: Agent, rogue: Agent,
                                                        mount_volume: Callable[..., Mounted]) -> None:
    import pydicom

    allow_pacs(policy)
    m = mount_volume(policy)
    source = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
    header = pydicom.dcmread(source, stop_before_pixels=True)
    target = str(m.mountpoint / "ct.dcm")
    pacs.run({"op": "create_new", "path": target, "data": source.read_bytes().hex()},
             {"op": "read", "path": target})
    assert denied(rogue.run({"op": "read", "path": target})[0])
    m.unmount()
    anchor = run_cli("audit", "anchor", m.backing).stdout.split()[-1]
    verified = run_cli("audit", "verify", m.audit_log, "--anchor", anchor)
    assert verified.stdout.startswith("intact"), verified.stdout
    records = m.audit_records()
    opened = [r for r in records if r["event"] == "open" and r["outcome"] == "allowed"]
    assert opened and opened[0]["object"]["dicom"]["PatientID"] == str(header.PatientID)
    assert opened[0]["object"]["dicom"]["StudyInstanceUID"] == str(header.StudyInstanceUID)
    assert opened[0]["program"]["argv"][1].endswith("pacs_agent.py") and opened[0]["rule"] == "pacs"
    released = [r for r in records if r["event"] == "release" and r.get("bytes_read")]
    assert released[0]["bytes_read"] == source.stat().st_size
    assert released[0]["object"]["inode"] == (m.backing / "ct.dcm").stat().st_ino  # as the mount showed it
    refused = [r for r in records if r["outcome"] == "denied" and r["object"]["path"] == "/ct.dcm"]
    assert refused and refused[0]["errno"] == errno.EACCES
    assert refused[0]["program"]["argv"][1].endswith("rogue_agent.py")
    assert [r["event"] for r in records if r["event"] in ("mount", "unmount")] == ["mount", "unmount"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small tmpfs for the audit log")
def test_access_is_refused_when_the_audit_log_cannot_be_written(policy: Path, pacs: Agent, tmp_path: Path,
                                                                mount_volume: Callable[..., Mounted]) -> None:
    """Fail closed: an access the audit trail cannot record is not allowed (the default)."""
    log_disk = tmp_path / "logdisk"
    log_disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(log_disk)], check=True)
    try:
        allow_pacs(policy)
        m = mount_volume(policy, "--audit-log", str(log_disk / "audit.jsonl"))
        target = str(m.mountpoint / "img.dcm")
        assert pacs.run({"op": "create_new", "path": target, "data": "00" * 100})[0]["ok"]
        filler = log_disk / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)  # the log's disk fills up
        try:
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * 65536)
        finally:
            os.close(fd)
        refused = None
        for _ in range(200):  # records are written in groups: within a few opens the writer fails
            result = pacs.run({"op": "read", "path": target})[0]
            if not result["ok"]:
                refused = result
                break
            time.sleep(0.05)
        assert refused == {"ok": False, "errno": errno.EACCES}, "opens kept working without an audit trail"
        assert "audit" in m.log().lower() and "refused" in m.log().lower()
        m.unmount()
    finally:
        for mount in mount_volume_points(tmp_path):
            subprocess.run(["fusermount3", "-uz", mount], check=False)
        subprocess.run(["umount", "-l", str(log_disk)], check=False)


def mount_volume_points(base: Path) -> list[str]:
    with open("/proc/mounts", encoding="utf-8") as table:
        return [line.split()[1] for line in table
                if line.split()[2].startswith("fuse") and line.split()[1].startswith(str(base))]


def test_operator_status_and_unmount_leave_no_denial_in_the_trail(
        policy: Path, pacs: Agent, mount_volume: Callable[..., Mounted]) -> None:
    """`encfs-pacs status/unmount MOUNTPOINT` run by a program on no rule (the operator's CLI):
    they must not stat the mountpoint (click.Path did), which the mount denies and audits.
    --shared-storage: no attribute caching, so any stat of the root reaches the daemon."""
    allow_pacs(policy)
    m = mount_volume(policy, "--shared-storage")
    run_cli("status", m.mountpoint)
    run_cli("unmount", m.mountpoint)
    assert m.audit_log is not None
    records = [json.loads(line) for line in m.audit_log.read_text().splitlines()]
    assert records[-1]["event"] == "audit-stop"
    assert [r for r in records if r.get("outcome") == "denied"] == []
