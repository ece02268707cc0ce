"""The webmail for professionals, French UI (to come)."""
