"""branchline: an isolated copy of the world for every change."""

__version__ = "0.1.0"
