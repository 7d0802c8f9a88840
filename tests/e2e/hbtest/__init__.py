"""Helpers for hookbridge's end-to-end tests: real processes on loopback."""
