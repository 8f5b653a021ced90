"""Bundled offline web sites (Classifieds, Shopping, Reddit) in the spirit of VisualWebArena's.

`start_sites()` serves all three on free 127.0.0.1 ports; `python -m envs.web.sites` does so until Ctrl-C.
Login on every site: username `user`, password `password`.
"""

from envs.web.sites.server import TEST_PASSWORD, TEST_USERNAME, RunningSites, SiteStartError, start_sites

__all__ = ["TEST_PASSWORD", "TEST_USERNAME", "RunningSites", "SiteStartError", "start_sites"]
