"""``python -m mailwarden`` is the ``mailwarden`` command."""

from .cli import main

main()
