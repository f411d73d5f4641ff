"""Upstream clients: one per provider behind one protocol, over one shared HTTP session."""
