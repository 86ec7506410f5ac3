"""Words the mails show for processes, statuses and waiting reasons, marked for gettext.

The strings are extracted into the mail catalogs (babel.cfg) and translated at
rendering time in the recipient's language.
"""


def _(text: str) -> str:  # marker for extraction; translated by the renderer
    return text


PROCESS_LABELS = {
    "incident": _("Incident"),
    "service-request": _("Service Request"),
    "change": _("Non-standard change"),
}

STATUS_LABELS = {
    "New": _("New"),
    "Classification": _("Classification"),
    "In progress": _("In progress"),
    "Planned": _("Planned"),
    "Waiting": _("Waiting"),
    "Postponed": _("Postponed"),
    "Approval": _("Approval"),
    "Solved": _("Solved"),
    "Rejected": _("Rejected"),
    "Closed": _("Closed"),
}

WAITING_LABELS = {
    "third-party": _("waiting for a third party"),
    "customer-feedback": _("waiting for your feedback"),
    "customer-financial-approval": _("waiting for your financial approval"),
    "customer-hardware-arrival": _("waiting for the arrival of your hardware"),
    "customer-hardware-return": _("waiting for the return of your hardware"),
    "final-solution": _("temporarily solved, waiting for the final solution"),
    "rfc": _("waiting for a non-standard change to be carried out"),
}

# The words a customer replies with to answer an Approval mail, in their language; the
# reader of the answers (gateway.ingest.answers) knows them in every language.
APPROVE_WORD = _("approved")
REJECT_WORD = _("refused")

# A date and a time in a sentence ("on %(date)s"), each written as the language writes
# them (gateway.outbound.render.WRITTEN_DATE, WRITTEN_TIME): "27 novembre 2026 à 10 h 30",
# "27 november 2026 om 10.30 uur", "27. November 2026 um 10:30 Uhr".
DATE_AT_TIME = _("%(date)s at %(time)s")
