"""The `brainstacks` console script: one entry point whose subcommands come from the packages that own them.

It lives outside `brainstacks/` so that the library never imports `server/` or `training/` (see tests/test_layering.py).
"""
