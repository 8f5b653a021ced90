"""The base of every error a user can cause and fix (bad path, bad config key, unreadable image,
missing action statistics, malformed model output). The CLI prints these as one message, no
traceback. Pure Python, so ``magma.actions`` can use it without importing torch."""


class UserFacingError(Exception):
    """An error whose message names the problem and the fix."""
