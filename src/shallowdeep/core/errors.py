"""Typed errors of the library: the deploy runtime's own (``shallowdeep_deploy.errors``, one
definition, so that its errors are this package's too). Messages name arguments in backticks; the
command line swaps in the flag that sets each."""

from shallowdeep_deploy.errors import (
    ArgumentError,
    DataError,
    MissingExtraError,
    NotCalibratedError,
    RunFolderError,
    UserError,
    render_names,
)


class StageError(UserError):
    """A stage of a pipeline (``reproduce``) failed; the stages that needed it did not run, the rest finished."""


__all__ = [
    "ArgumentError",
    "DataError",
    "MissingExtraError",
    "NotCalibratedError",
    "RunFolderError",
    "StageError",
    "UserError",
    "render_names",
]
