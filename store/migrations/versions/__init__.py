"""Versioned schema changes, oldest first."""
