"""The Python API: :class:`Campaign`, :func:`resume` and :class:`Fleet` (re-exported by :mod:`buddy`)."""
