"""Errors the user can fix: cfh prints them without a traceback."""


class UserError(ValueError):
    """Bad input from the user (config value, argument, missing file); the message says what."""
