"""Unit tests of buddy.cli."""
