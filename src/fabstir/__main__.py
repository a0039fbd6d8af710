"""``python -m fabstir`` is the ``fabstir`` command (the devnet starts its processes this way)."""

from .cli import main

main()
