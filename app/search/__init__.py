"""Executing parsed queries: binding to the index's tags, then an engine evaluates the plan."""
