"""One module per schema revision, oldest first: ``NNNN_what.py`` with revision ``NNNN``."""
