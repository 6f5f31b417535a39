"""Unit tests of buddy.outputs."""
