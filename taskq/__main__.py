"""The ``taskq`` command's entry point (also ``python -m taskq``).

It patches for a green pool before anything else is imported (see
``taskq.monkey``), then hands over to the CLI (``taskq.cli``).
"""

from __future__ import annotations

import sys


def main() -> None:
    """Run the ``taskq`` command line."""
    from taskq import monkey

    # First, before the CLI imports the app, kombu or redis: see taskq.monkey.
    monkey.patch_for(monkey.pool_in(sys.argv[1:]))
    from taskq.cli import main as cli

    cli(prog_name="taskq")


if __name__ == "__main__":  # pragma: no cover
    main()
