"""Unit tests of buddy.infra."""
