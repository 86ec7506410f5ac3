"""The audit log (store.audit): an entry lands with the change it records, or not at all."""

from __future__ import annotations

import json

import pytest
from sqlmodel import select

from store.audit import entries, record
from store.db import session_for
from store.models import AuditEntry, Company


def test_an_entry_lands_with_its_change_or_not_at_all(gw):
    with session_for(gw.engine) as session:
        session.add(Company(name="Acme NV", language="nl"))
        record(session, "admin:ann@example.com", "company.language", "company:Acme NV", before={"language": ""},
               after={"language": "nl"}, client="192.0.2.7")
        session.commit()
    with pytest.raises(RuntimeError):
        with session_for(gw.engine) as session:
            record(session, "admin:ann@example.com", "company.language", "company:Acme NV",
                   before={"language": "nl"}, after={"language": "fr"})
            raise RuntimeError("the change failed")  # never committed: neither is its entry
    with session_for(gw.engine) as session:
        [entry] = entries(session, target="company:Acme NV")
        assert session.exec(select(AuditEntry)).all() == [entry]
    assert (entry.actor, entry.action, entry.client) == ("admin:ann@example.com", "company.language", "192.0.2.7")
    assert json.loads(entry.before) == {"language": ""} and json.loads(entry.after) == {"language": "nl"}
    assert entry.at is not None
