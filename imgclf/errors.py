"""User-facing errors: the CLI prints these as one line and exits 2, with no traceback."""


class UserError(Exception):
    """A mistake the user can fix (wrong path, no images, one class...): message says what and where."""
