"""Command-line interface: one module per command group, all calling the library."""

from __future__ import annotations

import os
from pathlib import Path

import click


class UnstattedPath(click.ParamType):
    """A path taken as given. click.Path stats its value even when it need not exist, and a
    stat of a mountpoint by a program the allow-list does not know (the operator's own
    `unmount` or `status`) is denied by the mount and recorded as a denial in its audit trail."""

    name = "path"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        if not isinstance(value, str | os.PathLike):
            self.fail(f"{value!r} is not a path", param, ctx)
        return Path(value)
