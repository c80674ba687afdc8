"""The one exception type that the command line turns into a one-line message and exit status 2."""


class UserError(Exception):
    """Bad input from the user: the message names the problem and what to do about it."""
