"""Unit tests of buddy.optimizer."""
