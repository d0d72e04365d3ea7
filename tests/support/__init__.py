"""Test-only helpers that are not fixtures: clusters, standbys, npm binaries."""
