"""The exceptions both plug-ins show to the user."""


class UserError(Exception):
    """Something the user can fix; the message is shown as it is."""


class Cancelled(UserError):
    """The user (or a script) cancelled the run; nothing was changed."""
