"""Small helpers that no library provides."""
