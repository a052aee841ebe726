"""The one exception type of the preprocessing stage."""

from __future__ import annotations


class PreprocessError(ValueError):
    """A raw file or configuration that cannot be preprocessed.

    Messages name the file, the field (column, tracer, group) and what was expected and found.
    """
