"""The one exception type that means "the user's input is wrong" (reported in one line, exit code 2)."""


class UserError(Exception):
    """Bad input from the user: printed as one line on stderr, exit code 2, never a traceback."""
