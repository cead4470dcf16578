"""Helpers for tests: tiny tokenizers (and later tiny models) built in-process, no network."""
