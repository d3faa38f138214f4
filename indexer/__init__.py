"""Sagashi's batch machinery: scan, pipeline, jobs, reindex, and the ``sagashi`` CLI."""
