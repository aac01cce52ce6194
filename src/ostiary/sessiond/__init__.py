"""The session daemon: issues, validates and revokes API sessions, failing closed."""
