"""Sagashi: the domain and the service (settings, tagger, store, query, search, api, web).

This package never imports ``indexer``; the batch machinery depends on it, not the reverse.
"""

__version__ = "0.1.0"
