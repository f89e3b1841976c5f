"""Errors a user can act on. The CLI prints them as one line and exits with code 2; no traceback."""


class UserError(Exception):
    """Bad input or arguments: a missing folder, malformed JSON, a conflicting build folder."""


class BuildError(UserError):
    """A build cannot go on as configured."""


class SourceError(UserError):
    """A source cannot be read as given."""


def quiet_teardown() -> None:
    """After Ctrl-C, before exiting: objects the interrupt left half-made (a data loader iterator whose
    workers were starting) report errors from their destructors as 'Exception ignored' tracebacks at
    exit. They say nothing the user can act on; the one line about the interrupt does."""
    import sys

    sys.unraisablehook = lambda unraisable: None
