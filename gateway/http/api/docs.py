"""The API's description: /api/v1/openapi.json (FastAPI's OpenAPI document of the /api/v1
routes) and /api/v1/docs, a page rendered here that lists every operation with its
parameters, role and answers: no script, no style sheet, no font from a CDN (the servers
that run a service desk often reach no internet).  Both are public: they describe the
API, they show no data."""

from __future__ import annotations

import html

from fastapi import APIRouter, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["documentation"])


DESCRIPTION = ("Tickets, people, received mail, notifications and templates of the gateway. "
               "Authorization: Bearer <token> (gateway tokens create NAME --role read|agent|admin). "
               "Errors are application/problem+json (RFC 9457).")


def document(app) -> dict:
    """The OpenAPI document of the API application, made once, with its bearer scheme."""
    if app.openapi_schema is None:
        spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes,
                           servers=[{"url": "/api/v1"}])
        spec.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        spec["security"] = [{"bearer": []}]
        app.openapi_schema = spec
    return app.openapi_schema


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; max-width: 60em; margin: 2em auto; padding: 0 1em; color: #222; }}
h2 {{ border-bottom: 1px solid #ccc; margin-top: 2em; }}
.op {{ margin: 1em 0 1.5em; }}
.method {{ font: bold 13px monospace; padding: .1em .4em; border-radius: 3px; background: #eee; }}
code {{ font-size: 13px; }} table {{ border-collapse: collapse; margin: .3em 0; }}
td, th {{ text-align: left; padding: .15em .8em .15em 0; vertical-align: top; font-size: 14px; }}
</style></head><body>
<h1>{title} <small>{version}</small></h1>
<p>{description}</p>
<p>The machine-readable description: <a href="openapi.json">openapi.json</a> (OpenAPI {openapi}).</p>
{body}
</body></html>"""


def _schema_name(schema: dict) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " | ".join(_schema_name(s) for s in schema["anyOf"])
    if schema.get("type") == "array":
        return f"list of {_schema_name(schema.get('items', {}))}"
    if "enum" in schema:
        return " | ".join(str(v) for v in schema["enum"])
    return schema.get("type", "any")


@router.get("/docs", include_in_schema=False, response_class=HTMLResponse)
def page(request: Request) -> HTMLResponse:
    spec = document(request.app)
    sections: dict[str, list[str]] = {}
    for path, methods in spec.get("paths", {}).items():
        for method, op in methods.items():
            rows = "".join(
                f"<tr><td><code>{html.escape(p['name'])}</code></td><td>{html.escape(p['in'])}</td>"
                f"<td>{html.escape(_schema_name(p.get('schema', {})))}</td>"
                f"<td>{html.escape(p.get('description') or '')}</td></tr>" for p in op.get("parameters", []))
            body = op.get("requestBody", {}).get("content", {})
            bodies = ", ".join(f"{html.escape(kind)} ({html.escape(_schema_name(c.get('schema', {})))})"
                               for kind, c in body.items())
            answers = ", ".join(f"{code}" for code in op.get("responses", {}))
            sections.setdefault(op.get("tags", ["other"])[0], []).append(
                f"<div class=op><span class=method>{method.upper()}</span> <code>{html.escape(path)}</code>"
                f"<div>{html.escape(op.get('summary', ''))}</div>"
                + (f"<table><tr><th>parameter</th><th>in</th><th>type</th><th></th></tr>{rows}</table>" if rows else "")
                + (f"<div>Body: {bodies}</div>" if bodies else "")
                + f"<div>Answers: {html.escape(answers)}</div></div>")
    body = "".join(f"<h2>{html.escape(tag)}</h2>{''.join(ops)}" for tag, ops in sections.items())
    info = spec["info"]
    return HTMLResponse(PAGE.format(title=html.escape(info["title"]), version=html.escape(info["version"]),
                                    description=html.escape(info.get("description", "")),
                                    openapi=html.escape(spec.get("openapi", "")), body=body),
                        headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"})
