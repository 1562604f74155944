"""Entry point: the `encfs-pacs` command group and its error handling.

Every EncfsPacsError becomes one line on stderr and its own exit code (see errors.py);
anything else is a bug and prints a traceback with exit code 70.
"""

from __future__ import annotations

import sys
import traceback

import click

from .. import __version__
from ..errors import INTERNAL_ERROR_EXIT_CODE, EncfsPacsError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="encfs-pacs")
def cli() -> None:
    """Transparent encryption for PACS image archives.

    \b
    Operator:  init, mount, unmount, status, demo
    Admin:     allow (add, grant, list, remove, check), policy (validate, suggest, simulate)
    Maintenance: import, export, fsck, passwd, recovery-key (create, check)
    """


def _register_commands() -> None:
    from . import allow, audit, demo, maintenance, policy, status, volume

    for command in (volume.init, volume.mount, volume.unmount, status.status, demo.demo, allow.allow,
                    policy.policy_group, *maintenance.COMMANDS):
        cli.add_command(command)
    cli.add_command(audit.audit_group)


_register_commands()


def main(argv: list[str] | None = None) -> None:
    try:
        # Without standalone mode click returns (not raises) the code of a command's Exit.
        code = cli.main(args=argv, prog_name="encfs-pacs", standalone_mode=False)
        if isinstance(code, int) and code != 0:
            sys.exit(code)
    except EncfsPacsError as exc:
        click.echo(f"encfs-pacs: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("encfs-pacs: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception:
        traceback.print_exc()
        click.echo("encfs-pacs: internal error (a bug): please report the traceback above", err=True)
        sys.exit(INTERNAL_ERROR_EXIT_CODE)
