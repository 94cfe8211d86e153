"""Verdicts on media: predict, explanations and batch scanning."""
