"""Errors a user can act on. The CLI prints them as one line and exits with code 2; no traceback."""


class UserError(Exception):
    """Bad input or arguments: a missing folder, malformed JSON, a conflicting build folder."""


class BuildError(UserError):
    """A build cannot go on as configured."""


class SourceError(UserError):
    """A source cannot be read as given."""
