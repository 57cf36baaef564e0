"""Algorithms of the seed's family, each a small module that reads top to bottom.

- ``svi``: trajectory SVI over H-step segments with a learned soft terminal value (the flagship);
- ``sac``: its H = 1, no-dynamics-gradient special case.
"""

from . import sac, svi

__all__ = ["sac", "svi"]
