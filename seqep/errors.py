"""User-facing errors: raised for bad input, printed by run.py as one line, exit status 2."""


class SeqepError(ValueError):
    """A problem the user can fix (bad override, missing file, mismatched checkpoint). The message says how."""
