"""One layer of actions: what an agent, an admin or a customer does to the gateway's data,
for every face of it alike: the ``gateway`` command line, the HTTP API, the admin
console and the customer pages.  A rule lives here (or below, in store/ and the
decisions of gateway/ingest), never in a command or a route: a status change by API and
by CLI give the same history, the same notification and the same errors.

Each action is one transaction.  Errors are typed: gateway.errors.NotFound for what does
not exist (store.tickets.NotFound for a ticket), gateway.errors.Refused and
store.lifecycle.LifecycleError for what the rules refuse, each with a message a person
can read; the faces turn them into an exit status, an HTTP status or a message on a page.

- ``tickets``: create, move, comment, convert, close (the manual's rules, store.lifecycle)
- ``inbound``: mail received: list, show, raw bytes, reprocess what was quarantined
- ``outbox``: notifications: list, show with every attempt, send again
- ``people``: people and companies: add, update, import, a company's language
- ``templates``: the templates in use, a preview, the check of every case
- ``views``: a ticket as the faces show it (mails, comments, attachments, history)

A face that acts for someone (the API for a token) passes ``Actor``: the action writes
the audit entry in its own transaction (store.audit).  Webhook events (store.webhooks)
are queued there too, with the change.
"""

from gateway.actions.tickets import (Done, _locked, close_solved, comment, convert_to_change, create_ticket,
                                     set_status)

__all__ = ["Done", "close_solved", "comment", "convert_to_change", "create_ticket", "set_status", "_locked"]
