"""E-mail gateway for IT service desks: mail in, tickets kept, mail out."""

__version__ = "0.1.0"
