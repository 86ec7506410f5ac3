"""Errors with a meaning for the mail path."""


class GatewayError(Exception):
    pass


class Reject(GatewayError):
    """Refuse at the door, while the sender can still be told (an SMTP answer)."""

    def __init__(self, code: int, text: str):
        super().__init__(f"{code} {text}")
        self.code = code
        self.text = text


class Quarantine(GatewayError):
    """Keep the raw mail, make no ticket, and say why."""

    def __init__(self, reason: str):
        # A reason quoting raw 8-bit header bytes (surrogates) could not be stored: as
        # UTF-8 where they are, else replaced.
        reason = reason.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        super().__init__(reason)
        self.reason = reason


class Wait(GatewayError):
    """Not now: something the mail needs is not there (the virus scanner does not
    answer).  The mail stays received and is tried again; no attempt is counted."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class StoreFailed(GatewayError):
    """The raw mail could not be stored durably: the sender must try again (451)."""


class CommandError(GatewayError):
    """A command-line request that cannot be done; printed without a traceback."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


class NotFound(CommandError):
    """What an action was asked about does not exist (a ticket, a mail, a notification)."""

    def __init__(self, message: str):
        super().__init__(message, status=1)


class Refused(CommandError):
    """An action the rules refuse as asked (a mail that is not quarantined cannot be
    processed again); the message says why, in words for the person who asked."""

    def __init__(self, message: str):
        super().__init__(message, status=1)
