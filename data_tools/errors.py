"""The base of every error a user can cause and fix (bad path, bad config key, unreadable image,
corrupt video, missing action statistics, malformed model output).

It lives in the lowest package, and only here, so that every package can raise it without importing
upwards (imports flow ``data_tools <- envs <- magma <- lapa``). The ``agent`` CLI prints these as one
message and exits with status 2, without a traceback. Pure Python.
"""


class UserFacingError(Exception):
    """An error whose message names the problem and the fix."""
