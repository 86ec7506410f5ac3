"""/api/v1/people and /api/v1/companies: read, add, update (language, time zone,
company), import a CSV (gateway.actions.people, as ``gateway persons``)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from gateway.actions import people
from gateway.app import App
from gateway.http.api.auth import actor_of, require
from gateway.http.api.problems import Problem
from gateway.http.deps import gateway_app
from gateway.actions.api_tokens import Caller

router = APIRouter(tags=["people"])


class PersonIn(BaseModel):
    """The fields to set; a field left out keeps its value."""

    name: str | None = None
    language: str | None = Field(None, description="fr, nl, en or de; empty: the company's")
    company: str | None = None
    timezone: str | None = Field(None, description="e.g. Europe/Brussels")


class NewPerson(PersonIn):
    email: str


class CompanyIn(BaseModel):
    language: str = Field(description="fr, nl, en or de: the language of its people who have none")


@router.get("/people", summary="People, by e-mail address (cursor: the last address of the previous page)")
def list_people(app: App = Depends(gateway_app), _: Caller = Depends(require("read")),
                q: str | None = Query(None, description="part of the e-mail address or name"),
                company: str | None = None, cursor: str | None = None,
                limit: int = Query(100, ge=1, le=500)) -> dict:
    rows = people.listing(app, text=q, company=company, after=cursor, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return {"items": rows, "next_cursor": rows[-1]["email"] if more and rows else None}


@router.get("/people/{email}", summary="One person")
def show_person(email: str, app: App = Depends(gateway_app), _: Caller = Depends(require("read"))) -> dict:
    return people.get(app, email)


@router.post("/people", status_code=201, summary="Add a person (or update the one with that address)")
def add_person(body: NewPerson, request: Request, app: App = Depends(gateway_app),
               caller: Caller = Depends(require("agent"))) -> dict:
    data, created = people.save(app, body.email, name=body.name, language=body.language, company=body.company,
                                timezone=body.timezone, actor=actor_of(request, caller))
    return {**data, "created": created}


@router.patch("/people/{email}", summary="Update a person's name, language, company or time zone")
def update_person(email: str, body: PersonIn, request: Request, app: App = Depends(gateway_app),
                  caller: Caller = Depends(require("agent"))) -> dict:
    people.get(app, email)  # 404 for an unknown person: an update adds no one
    data, _ = people.save(app, email, name=body.name, language=body.language, company=body.company,
                          timezone=body.timezone, actor=actor_of(request, caller))
    return data


@router.post("/people/import", summary="Add or update people from a CSV (email,name,language,company,timezone)",
             openapi_extra={"requestBody": {"content": {"text/csv": {"schema": {"type": "string"}}}}})
async def import_people(request: Request, app: App = Depends(gateway_app),
                        caller: Caller = Depends(require("admin"))) -> dict:
    data = await request.body()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise Problem(422, "the CSV must be UTF-8") from None
    result = await run_in_threadpool(people.import_csv, app, text, source="the CSV sent",
                                     actor=actor_of(request, caller))
    return result.as_dict()


@router.get("/companies", summary="Companies and their languages")
def list_companies(app: App = Depends(gateway_app), _: Caller = Depends(require("read"))) -> list[dict]:
    return people.companies(app)


@router.put("/companies/{name}", summary="Set a company's language (the fallback of its people)")
def set_company(name: str, body: CompanyIn, request: Request, app: App = Depends(gateway_app),
                caller: Caller = Depends(require("agent"))) -> dict:
    return people.set_company_language(app, name, body.language, actor=actor_of(request, caller))
