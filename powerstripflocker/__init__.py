"""Portable Docker volumes through a Powerstrip adapter and a Flocker-compatible cluster."""

__version__ = "0.1.0"
