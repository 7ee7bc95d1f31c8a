"""The one error base class: everything opslab raises on purpose is an OpslabError, whose
message says what went wrong and what to do next; the `opslab` command prints it and exits 1."""


class OpslabError(RuntimeError):
    """An expected failure with a message meant for the person at the keyboard."""
