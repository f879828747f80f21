"""Serving: the Runtime, model loading, I/O contracts, backends and preprocessing."""
