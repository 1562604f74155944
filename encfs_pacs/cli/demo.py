"""`encfs-pacs demo`: a guided tour on a throw-away volume (placeholder, replaced below)."""

import click


@click.command()
def demo() -> None:
    """Run the demonstration."""
    raise click.ClickException("not yet")
