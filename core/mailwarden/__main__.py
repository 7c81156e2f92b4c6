"""``python -m mailwarden`` is the ``mailwarden`` command."""

from .launch import main

main()
