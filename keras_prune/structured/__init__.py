"""Structured pruning: whole channels found from the graph, scored, and removed."""
