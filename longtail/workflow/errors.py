"""Errors of the pipelines' stages and commands (a light module: the CLI imports it to report them)."""


class StageError(ValueError):
    """A stage's input is unusable (a missing earlier stage, an unknown scenario); names the fix."""


class PipelineCommandError(ValueError):
    """Bad input to a ``longtail pipelines`` command (names the option and the fix)."""
