"""The one exception type that the CLI turns into a single clear line instead of a traceback."""


class UserError(Exception):
    """Bad input from the user: a wrong value, a missing file, an unsupported model.

    The message must name the bad value and what is allowed.
    """
