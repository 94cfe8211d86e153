"""Fakes made on purpose: blended, self-blended (SBI) and synthetic training faces."""
