"""`encfs-pacs demo`: a guided tour on a throw-away volume.

It drives the real CLI (init, mount, unmount) in subprocesses, exactly as an admin would,
stores pydicom's bundled sample images through the mount, and shows what lands on disk.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import click

from ..errors import EncfsPacsError

STEPS = 7


def _say(step: int, text: str) -> None:
    click.echo()
    click.secho(f"[{step}/{STEPS}] {text}", bold=True)


def _cli(*args: str) -> str:
    """Run encfs-pacs as a separate process, as a user would; raise with its own message."""
    result = subprocess.run([sys.executable, "-m", "encfs_pacs", *args], capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise EncfsPacsError(f"'encfs-pacs {args[0]}' failed: {result.stderr.strip()}")
    return result.stdout.strip()


def sample_dicom_files() -> list[tuple[Path, str, str]]:
    """pydicom's bundled test images that have a patient: (path, patient ID, modality).

    Only files inside the installed wheel: pydicom's get_testdata_files() would try to
    download more from the internet."""
    import pydicom

    folder = Path(pydicom.__file__).parent / "data" / "test_files"
    samples = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in sorted(glob.glob(str(folder / "*.dcm"))):
            try:
                header = pydicom.dcmread(name, stop_before_pixels=True)
            except Exception:  # a few samples are deliberately malformed
                continue
            if str(header.get("PatientID", "")).strip():
                samples.append((Path(name), str(header.PatientID), str(header.get("Modality", "?"))))
    return samples


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _hex(raw: bytes) -> str:
    return " ".join(f"{b:02x}" for b in raw)


@click.command()
@click.option("--keep", is_flag=True, help="Leave the throw-away folder in place for a look.")
def demo(keep: bool) -> None:
    """Show encfs-pacs at work on a throw-away volume with sample DICOM images.

    \b
    Example:
      encfs-pacs demo
    """
    work = Path(tempfile.mkdtemp(prefix="encfs-pacs-demo-"))
    backing, mnt, secret_file = work / "backing", work / "mnt", work / "demo-secret"
    mounted = False
    try:
        _say(1, f"Creating a throw-away encrypted volume in {backing}")
        secret_file.write_text(secrets.token_urlsafe(24) + "\n")
        secret_file.chmod(0o600)
        click.echo(f"    a random passphrase for this demo only is in {secret_file} (mode 0600)")
        click.echo("    " + _cli("init", str(backing), "--passphrase-file", str(secret_file),
                                 "--scrypt-log-n", "14").splitlines()[0])

        _say(2, f"Allowing only this demo program, then mounting on {mnt}")
        policy = work / "policy" / "policy.toml"
        click.echo("    " + _cli("allow", "add", "--policy", str(policy), "--id", "demo",
                                 "--exe", sys.executable, "--args", "*encfs*pacs* demo*"))
        mnt.mkdir()
        click.echo("    " + _cli("mount", str(backing), str(mnt), "--passphrase-file", str(secret_file),
                                 "--log-file", str(work / "daemon.log"), "--policy", str(policy)))
        mounted = True

        samples = sample_dicom_files()
        _say(3, f"Storing {len(samples)} sample DICOM images from pydicom through the mount, "
                "as a PACS would")
        stored = []
        for source, patient, modality in samples:
            target = mnt / "studies" / modality / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            stored.append((source, target, patient))
        total = sum(s.stat().st_size for s, _, _ in stored)
        click.echo(f"    stored {len(stored)} files, {total / 1024:.0f} KiB, "
                   f"{len({p for _, _, p in stored})} distinct patient IDs")

        _say(4, f"Looking at the backing folder {backing}: what a thief or ransomware would find")
        _show_ciphertext(backing, mnt, stored)

        _say(5, "Reading every image back through the mount and comparing SHA-256 with the original")
        same = sum(_sha256(source) == _sha256(target) for source, target, _ in stored)
        click.echo(f"    {same} of {len(stored)} files read back byte-identical")
        if same != len(stored):
            raise EncfsPacsError("some files did not read back identically: this is a bug")

        _say(6, "Playing ransomware: programs not on the allow-list try to read, encrypt and delete")
        _show_denials(stored[0][1])
        same = sum(_sha256(source) == _sha256(target) for source, target, _ in stored)
        click.echo(f"    afterwards {same} of {len(stored)} files are still byte-identical")

        _say(7, "Unmounting and removing the throw-away volume")
        click.echo("    " + _cli("unmount", str(mnt)))
        mounted = False
    finally:
        if mounted:
            with contextlib.suppress(EncfsPacsError):
                _cli("unmount", str(mnt))
        if keep:
            click.echo(f"    kept {work} (unmounted) for you to look at")
        else:
            shutil.rmtree(work, ignore_errors=True)
            click.echo(f"    removed {work}")
    click.echo()
    click.secho("Demo finished: ciphertext on disk, plaintext through the mount for allowed "
                "programs only.", bold=True)


def _show_denials(target: Path) -> None:
    attempts = [["cat", str(target)], ["dd", "if=/dev/urandom", f"of={target}", "bs=1k", "count=1"],
                ["mv", str(target), f"{target}.locked"], ["rm", "-f", str(target)],
                ["ls", str(target.parent)]]
    for command in attempts:
        if shutil.which(command[0]) is None:
            continue
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        answer = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "succeeded"
        click.echo(f"    $ {' '.join(command)}\n      {answer}")
        if result.returncode == 0:
            raise EncfsPacsError(f"'{' '.join(command)}' was not denied: this is a bug")


def _show_ciphertext(backing: Path, mnt: Path, stored: list[tuple[Path, Path, str]]) -> None:
    source, target, patient = stored[0]
    relative = target.relative_to(mnt)
    on_disk = backing / relative
    click.echo(f"    same name on disk, different bytes: {relative}")
    click.echo(f"      through the mount : {_hex(target.read_bytes()[128:144])}  (bytes 128.. 'DICM' marker)")
    click.echo(f"      in backing folder : {_hex(on_disk.read_bytes()[128:144])}")
    click.echo(f"      size {target.stat().st_size} bytes plaintext, {on_disk.stat().st_size} bytes on disk "
               "(header + 28 bytes of nonce and tag per 64 KiB chunk)")
    # Needles of 6+ bytes: in ~2 MB of random ciphertext a 4-byte string turns up by chance.
    needles = {b"DICM\x02\x00"} | {p.encode() for _, _, p in stored if len(p) >= 6}
    files = [Path(root) / name for root, _, names in os.walk(backing) if ".encfs-pacs" not in root
             for name in names]
    leaking = [f for f in files if any(needle in f.read_bytes() for needle in needles)]
    click.echo(f"    searched {len(files)} files on disk for the DICOM marker 'DICM' and "
               f"{len(needles) - 1} patient IDs: found in {len(leaking)} files")
    if leaking:
        raise EncfsPacsError(f"plaintext found on disk in {leaking[0]}: this is a bug")
