"""Packaging beyond what pyproject.toml can say (the project's metadata is there).

The mail templates and their catalogs stay at the repository's root, in
``templates/mail/`` (the layout of the design card), and ship inside the gateway package
as ``gateway/templates/mail/``: ``gateway.outbound.render.shipped_dir`` finds them there
in a wheel, and at the root of the checkout in an editable install.  Each folder of
``templates/`` is listed as a (namespace) package of its own, as setuptools asks for a
folder of data files; the code's packages are found as before, so a new one ships
without being listed here.  The Alembic revisions are modules of ``store.migrations``;
only its script template is a data file.
"""

from setuptools import find_namespace_packages, find_packages, setup

CODE = find_packages(include=["gateway", "gateway.*", "store", "store.*"])
SHIPPED = ["gateway.templates", *(f"gateway.templates.{name}" for name in find_namespace_packages(where="templates"))]

setup(
    packages=CODE + SHIPPED,
    package_dir={"gateway.templates": "templates"},
    package_data={
        **{name: ["*.j2", "*.html", "*.po", "*.pot", "*.css", "*.js"] for name in SHIPPED},
        "store.migrations": ["script.py.mako"],
    },
)
