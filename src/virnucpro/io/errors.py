"""The errors this project raises on purpose: bad input, config or models, a full disk.

Their message says all a user needs (the file, the record or line, the problem), so they are shown
as that message alone, without a traceback, as the last thing a run prints (`virnucpro.run.failures`).
Any other exception is a bug of the project and keeps its traceback.
"""

from __future__ import annotations


class VirnucproError(ValueError):
    """An error for the user to fix: its message names what is wrong and where."""
