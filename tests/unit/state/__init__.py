"""Unit tests of buddy.state."""
