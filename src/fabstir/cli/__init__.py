"""The ``fabstir`` command line (the only layer that prints)."""

from . import _network as _network  # registers host, bootstrap and devnet
from ._main import cli, exit_code_for, main

__all__ = ["cli", "exit_code_for", "main"]
