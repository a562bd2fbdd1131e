"""Errors raised by the backends."""


class BackendUnavailable(RuntimeError):
    """A backend cannot run here; the message says why and how to fix it."""
