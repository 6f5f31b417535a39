"""Unit tests of buddy.tools."""
