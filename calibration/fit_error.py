"""The one error of fitting a profile: the samples cannot determine what was asked."""
from __future__ import annotations


class FitError(ValueError):
    """The samples cannot determine what was asked; the message names the feature."""
