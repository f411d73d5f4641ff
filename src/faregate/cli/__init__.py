"""The `faregate` command line: it declares commands and calls the services the API uses."""

from faregate.cli.commands import main

__all__ = ["main"]
