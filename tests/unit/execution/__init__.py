"""Unit tests of buddy.execution."""
