"""Unit tests of buddy.plan."""
