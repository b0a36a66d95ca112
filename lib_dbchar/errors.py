"""Typed errors. Library code raises these; only the UI/CLI turn them into messages."""


class DbcharError(Exception):
    """Base class: a problem the user can act on. The message says what and what to do."""


class JobStopped(DbcharError):
    """The user asked a running job to stop (Interrupt button, Stop button, Ctrl+C)."""


class NameRejected(DbcharError, ValueError):
    """A name the user typed cannot become a file or folder name."""


class TargetExists(DbcharError, FileExistsError):
    """Writing would replace an existing file or folder the user did not ask us to replace."""


class DependencyProblem(DbcharError):
    """A package we need is missing or at a version we cannot work with."""
