"""Worked examples: environments and scripts written against the library's public API."""
