"""``python -m buddy`` is the ``buddy`` command."""

from buddy.cli import main

main()
