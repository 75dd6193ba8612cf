"""User-facing errors and stops: the CLI prints these as one line and exits 2 (an error) or 128 + the signal's
number (a stop), with no traceback."""

import signal


class UserError(Exception):
    """A mistake the user can fix (wrong path, no images, one class...): message says what and where."""


class Interrupted(KeyboardInterrupt):
    """A stop asked for by a signal: `signum` says which (SIGINT for Ctrl-C, SIGTERM from docker stop, SLURM or
    systemd), so the command can name it and exit 128 + signum, as a shell reports a process that signal ended. A
    `KeyboardInterrupt`, so code that handles Ctrl-C handles SIGTERM the same way."""

    def __init__(self, signum: int = signal.SIGINT, *args: object):
        super().__init__(*args)
        self.signum = int(signum)
