"""The exceptions the `adir` command line reports as one line: UsageError (exit code 2) and JobFailed (exit code 1)."""


class UsageError(ValueError):
    """A problem with what the user asked for (an option, a path, a config file): fix the command and rerun.

    `adir` prints it as one `adir COMMAND: error: ...` line and exits 2; any other failure of a
    job exits 1. Tracebacks only with --debug or ADIR_DEBUG=1.
    """


class JobFailed(RuntimeError):
    """A job that started and could not finish; its message is already scrubbed of credentials (exit code 1)."""
