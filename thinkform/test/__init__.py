"""Helpers SGLang's documentation notebooks import from `sglang.test` (kept under the same names)."""
