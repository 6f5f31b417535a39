"""Unit tests of buddy.coordinator."""
