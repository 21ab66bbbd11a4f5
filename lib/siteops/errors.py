"""Errors that carry the exit code a command ends with."""

import signal


class SiteopsError(Exception):
    """A failure the operator must see as one line; exit code 1."""

    exit_code = 1


class UsageError(SiteopsError):
    """Bad input from the operator, refused before any change; exit code 2."""

    exit_code = 2


class CommandError(SiteopsError):
    """An external command failed; carries argv, exit code and stderr."""

    def __init__(self, argv: list[str], code: int, stderr: str):
        self.argv, self.code, self.stderr = argv, code, stderr
        last = stderr.strip().splitlines()[-1:] or ["(no output)"]
        super().__init__(f"{' '.join(argv)} exited {code}: {last[0]}")


class PutBackFailed(SiteopsError):
    """Files of a failed or interrupted change could not all be put back."""


class Interrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM: the command stops as promptly as it can, puts
    back what it had not checked, and exits 128 + the signal's number."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
