"""Ostiary: a hardened API session layer."""

__version__ = "0.1.0"
