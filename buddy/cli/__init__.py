"""The ``buddy`` command: a shell over the Python API."""
