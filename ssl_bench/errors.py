"""The errors that the CLI prints as one line with exit code 2 (no traceback): the user can fix them."""


class UserError(Exception):
    """Something the user can fix; the message says what is wrong and how to fix it."""


class ConfigError(UserError, ValueError):
    """A configuration value that cannot be used; the message names the key and what is allowed."""


class DataError(UserError, FileNotFoundError):
    """A dataset that is missing, incomplete or not the expected files."""
