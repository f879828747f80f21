"""Delivery: repository manifest, sources, the on-device store and publishing."""
