"""``python -m buddy`` is the ``buddy`` command."""

from buddy.cli.app import main

main()
