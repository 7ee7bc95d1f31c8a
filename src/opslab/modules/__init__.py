"""One file per module of the curriculum, named after it: its set-up steps, its rules, the helpers
its lessons reuse and the checks only it needs. Generic checks live in `opslab.checks`."""
