"""Command-line interface: one module per command group, all calling the library."""
