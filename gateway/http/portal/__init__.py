"""The customers' pages, under /portal (manual §2 and §3): a customer follows their
tickets from the link in every notification, or signs in by a link sent by mail; sees
their tickets and those of the companies granted them, searches them, reads and adds
comments and files, assesses a Solved ticket or says it is not solved, and opens an
Incident or a Service Request.

- ``routes``: the pages and forms (thin: the rules are gateway.actions.portal's);
- ``session``: who is signed in (a signed cookie) and the forms' CSRF tokens;
- ``pages``: the templates (templates/portal/) and their catalogs, in fr, nl, en, de.
"""

from gateway.http.portal.routes import router

__all__ = ["router"]
