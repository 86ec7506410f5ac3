"""Command groups of the ``gateway`` command line; each module has ``register(subparsers)``."""
