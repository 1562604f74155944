"""Admin commands about whole policies: validate, suggest (from learn mode), simulate."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from ..policy.editor import unique_id
from ..policy.identity import file_sha256
from ..policy.loader import load_policy
from ..policy.model import Policy
from ..policy.replay import read_records, simulate, suggest, suggestion_toml


@click.group("policy")
def policy_group() -> None:
    """Check a policy, build one from learn mode, or test one against recorded accesses."""


def _system_warnings(policy: Policy) -> list[str]:
    """Pinned programs that are missing here or whose binary changed since it was pinned."""
    warnings = []
    for rule in policy.rules:
        if rule.exe is None:
            continue
        if not os.path.isfile(rule.exe):
            warnings.append(f"rule {rule.id}: {rule.exe} does not exist on this host")
        elif rule.sha256 and file_sha256(rule.exe) != rule.sha256:
            warnings.append(f"rule {rule.id}: {rule.exe} changed since it was pinned (updated?): the "
                            f"rule no longer matches; re-pin with `encfs-pacs allow remove {rule.id}` "
                            f"and `encfs-pacs allow add --exe {rule.exe} ...`")
    return warnings


@policy_group.command("validate")
@click.argument("policy_file", type=click.Path(dir_okay=False, path_type=Path))
def validate(policy_file: Path) -> None:
    """Check POLICY_FILE; on error say file, line and what is wrong (exit 21).

    \b
    Example:
      encfs-pacs policy validate /etc/encfs-pacs/policy.toml
    """
    policy = load_policy(policy_file)
    for warning in [*policy.warnings, *_system_warnings(policy)]:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"{policy_file}: valid, {len(policy.rules)} rule(s), sha256 {policy.digest[:16]}")


@policy_group.command("suggest")
@click.argument("audit_logs", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--include-denied", is_flag=True, help="Also use real denials, not only learn-mode reports.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def suggest_command(audit_logs: tuple[Path, ...], include_denied: bool, as_json: bool) -> None:
    """Propose rules from what a --learn mount would have denied. Review before adding!

    \b
    Example:
      encfs-pacs mount /srv/pacs-enc /var/lib/orthanc/db --learn --audit-log /var/log/encfs-pacs/learn.log
      (run the PACS for a while, then)
      encfs-pacs policy suggest /var/log/encfs-pacs/learn.log >> proposed.toml
    """
    items = suggest(read_records(audit_logs), include_denied=include_denied)
    if as_json:
        click.echo(json.dumps([{**vars(item), "ops": sorted(item.ops), "paths": dict(item.paths),
                                "argv_examples": sorted(item.argv_examples),
                                "stat_paths": sorted(item.stat_paths), "path": item.path}
                               for item in items], indent=2))
        return
    if not items:
        click.echo("# nothing would have been denied in these logs: no rules to suggest")
        return
    taken: set[str] = set()
    for item in items:
        rule_id = unique_id(taken, os.path.basename(item.exe).lower() if item.exe else f"user-{item.user}")
        taken.add(rule_id)
        click.echo(suggestion_toml(item, rule_id) + "\n")


@policy_group.command("simulate")
@click.option("--policy", "policy_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The proposed policy.")
@click.argument("audit_logs", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def simulate_command(policy_file: Path, audit_logs: tuple[Path, ...], as_json: bool) -> None:
    """Replay recorded accesses against a proposed policy and list what would change.

    Tighten rules without breaking the PACS: anything "newly denied" is something the PACS
    (or a user) did that the new policy would refuse.

    \b
    Example:
      encfs-pacs policy simulate --policy new.toml /var/log/encfs-pacs/audit.log
    """
    policy = load_policy(policy_file)
    result = simulate(policy, read_records(audit_logs))
    if as_json:
        click.echo(json.dumps(result.as_json(), indent=2))
        return
    click.echo(f"replayed {result.replayed} recorded access(es): {result.unchanged} unchanged, "
               f"{sum(c.count for c in result.changes.values())} would change")
    for kind in ("newly denied", "newly allowed"):
        changes = [c for c in result.changes.values() if c.kind == kind]
        if changes:
            click.echo(f"\n{kind.upper()}:")
        for change in sorted(changes, key=lambda c: (-c.count, c.program, c.path)):
            click.echo(f"  {change.count:>5} × {change.op:<7} {change.path}  by {change.program} "
                       f"(user {change.user}); was {change.old}; now: {change.new}")
