"""``python -m flopkit.cli``: the ``flopkit`` command without its console script."""

from flopkit.cli import main

main()
