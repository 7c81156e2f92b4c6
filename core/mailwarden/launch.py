"""The ``mailwarden`` script: the command line, or one line saying why it cannot start.

The command line imports the pipeline, which loads the native core; a core left over from
another build is refused there (``NativeVersionError``). Loaded here first, that refusal is
one line naming both versions and exit status 2, not a traceback.
"""

from __future__ import annotations

import sys

__all__ = ["main"]

# cli.EXIT_ERROR, which cannot be imported before the core has loaded.
_EXIT_ERROR = 2


def main() -> None:
    """Entry point of the ``mailwarden`` script (and ``python -m mailwarden``)."""
    try:
        import mailwarden_native  # noqa: F401
    except ImportError as exc:
        # A core of another version, or none built: either way no command can run.
        print(f"mailwarden: {exc}", file=sys.stderr)
        sys.exit(_EXIT_ERROR)
    from .cli import main as cli_main

    cli_main()
