"""Errors the CLI, the server and the dashboard turn into one line, kept apart from the modules that raise them
so that catching one does not import torch (`status` on a broken workspace answers in a fraction of a second)."""


class ModelIntegrityError(RuntimeError):
    """A stored model's files do not match the digests its version recorded."""


class NoModelError(RuntimeError):
    """No model version where one is needed (nothing trained or promoted yet)."""


class ExecutorError(RuntimeError):
    """The configured executor cannot run work (a Ray cluster that cannot be reached, Ray not installed)."""
