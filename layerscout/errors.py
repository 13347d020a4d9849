"""User-facing errors: the CLI prints the message on one line and exits non-zero, no traceback."""


class LayerscoutError(Exception):
    """Bad input or a condition the user can fix (unknown model, no signal, layer out of range)."""
