"""The one exception the CLI prints as a sentence instead of a traceback."""


class UserFacingError(Exception):
    """An error whose message tells the user what to do; printed without a traceback."""
