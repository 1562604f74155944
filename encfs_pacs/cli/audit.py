"""Auditor commands: show a volume's audit anchor, verify audit logs. No secret is needed."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import click

from .. import store
from ..audit import parse_public_key, read_anchor, verify
from ..errors import AuditTampered, AuditUnavailable, UsageError


@click.group("audit")
def audit_group() -> None:
    """Check the audit trail (tamper evidence) without any key that decrypts images."""


@audit_group.command("anchor")
@click.argument("backing", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (hex and base64).")
def anchor_command(backing: Path, as_json: bool) -> None:
    """Print the volume's audit anchor: the public key every log of BACKING is verified against.

    Keep a copy away from the server (in the audit file, printed, in a password manager):
    `audit verify --anchor` with that copy proves the logs were not rewritten on the server.

    \b
    Example:
      encfs-pacs audit anchor /srv/pacs-enc > /secure/place/pacs-enc.anchor
    """
    store.read_config(backing)  # a clear error if BACKING is not a volume
    anchor = read_anchor(backing)
    if anchor is None:
        raise AuditUnavailable(f"{backing} has no audit anchor yet: it is created by 'encfs-pacs init', or "
                               "for older volumes at the first mount with an audit log")
    if as_json:
        click.echo(json.dumps({"backing": str(backing), "anchor": anchor.hex(),
                               "anchor_base64": base64.b64encode(anchor).decode("ascii")}))
    else:
        click.echo(anchor.hex())


def _anchor_from(value: str) -> bytes:
    """--anchor takes the key itself, or a file holding it (as `audit anchor` writes it)."""
    text = value
    path = Path(value)
    if len(value) not in (44, 64) and path.is_file():
        text = path.read_text(encoding="utf-8", errors="replace")
    try:
        return parse_public_key(text)
    except ValueError as exc:
        raise UsageError(f"--anchor {value!r}: {exc}") from None


@audit_group.command("verify")
@click.argument("logs", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--anchor", "anchor_text", metavar="KEY",
              help="The volume's anchor (hex or base64, or a file holding it): without it the logs can "
                   "only be checked for internal consistency.")
@click.option("--live", is_flag=True, help="The log belongs to a running mount: accept (and count) records "
                                           "not yet sealed at its end.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@click.pass_context
def verify_command(ctx: click.Context, logs: tuple[Path, ...], anchor_text: str | None, live: bool,
                   as_json: bool) -> None:
    """Check audit LOGs: every record hashed, chained, sealed, from the anchor to a stop seal.

    Give every file of the trail (rotated files too, in any order). Exit 0 only if intact;
    24 names the first bad record (edited, deleted, reordered, truncated, unsealed, forged,
    foreign or missing file). Without --anchor a consistent log is reported as NOT anchored
    (exit 0, with a warning): anyone can write a consistent log from scratch.

    \b
    Examples:
      encfs-pacs audit verify --anchor "$(cat /secure/place/pacs-enc.anchor)" /var/log/encfs-pacs/audit.log*
      encfs-pacs audit verify --live --anchor 3b6a27bc... /var/log/encfs-pacs/audit.log
    """
    anchor = _anchor_from(anchor_text) if anchor_text else None
    report = verify(list(logs), anchor, live=live)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        if not report.intact:
            ctx.exit(AuditTampered.exit_code)
        return
    lines = report.lines()
    if report.problem is not None:
        for line in lines[1:]:
            click.echo(line)
        raise AuditTampered(f"audit log not intact: {report.problem}")
    for line in lines:
        click.echo(line)
