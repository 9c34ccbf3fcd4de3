"""Configurations, one file per setup (see each file's docstring)."""
