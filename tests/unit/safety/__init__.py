"""Unit tests of buddy.safety."""
