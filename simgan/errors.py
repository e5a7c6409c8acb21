"""The base of simgan's typed errors. The CLI prints any of them as one line (exit status 2)."""


class SimganError(Exception):
    """Base class of every error simgan raises on purpose (bad data, bad checkpoints, bad input)."""
