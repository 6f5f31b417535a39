"""Unit tests of buddy.analysis."""
