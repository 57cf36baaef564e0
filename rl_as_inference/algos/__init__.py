"""Algorithms of the seed's family, each a small module that reads top to bottom."""

from . import sac

__all__ = ["sac"]
