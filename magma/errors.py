"""The base of every error a user can cause and fix; defined in ``data_tools.errors`` (the lowest
package, so every package can raise it) and re-exported here. Pure Python, so ``magma.actions``
can use it without importing torch."""

from data_tools.errors import UserFacingError

__all__ = ["UserFacingError"]
