"""The peer: django-helpdesk's ``get_email`` on the same mail files as ``gateway ingest``.

Run by bench.run, in two halves:

- in the benchmark's own Python: ``ensure_venv()`` makes a virtual environment of its own
  under the user's cache folder (``$XDG_CACHE_HOME`` or ``~/.cache``, ``gateway-bench/``;
  never in the repository), installs ``PEER`` from PyPI with pip once, and says the
  version installed; ``prepare()`` makes a site (a Django settings module, a SQLite
  database migrated, one queue reading a local mail folder);
- in the peer's Python (``python -m bench.peer_helpdesk run SITE``, this same file, with
  the venv's interpreter): Django set up, then the real ``get_email`` management command,
  which reads every file of the queue's folder, makes a ticket or follow-up of each,
  mails the submitter (Django's in-memory mail backend) and deletes the file.

One change to the peer, and why: its local-folder reader opens each file in text mode
with the locale's encoding (``open(m, "r")``): under UTF-8 it stops the whole queue at the
first ISO-8859-1 mail of the set.  Here ``open`` in ``helpdesk.email`` reads Latin-1
(every byte is a character), so it reads every mail, as the gateway does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

PEER = "django-helpdesk==2.6.1"

SETTINGS = '''
SECRET_KEY = "bench-only"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["*"]
SITE_ID = 1
INSTALLED_APPS = [
    "django.contrib.admin", "django.contrib.auth", "django.contrib.contenttypes", "django.contrib.sessions",
    "django.contrib.messages", "django.contrib.staticfiles", "django.contrib.sites", "django.contrib.humanize",
    "rest_framework", "helpdesk",
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": @DB@}}
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
DEFAULT_FROM_EMAIL = "helpdesk@example.com"
MEDIA_ROOT = @MEDIA@
ROOT_URLCONF = "helpdesk_bench_urls"
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True,
              "OPTIONS": {"context_processors": ["django.template.context_processors.request",
                                                 "django.contrib.auth.context_processors.auth",
                                                 "django.contrib.messages.context_processors.messages"]}}]
MIDDLEWARE = []
STATIC_URL = "/static/"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
HELPDESK_TEAMS_MODE_ENABLED = False  # teams need pinax-teams, which get_email does not use
LOGGING = {"version": 1, "disable_existing_loggers": False, "root": {"level": "ERROR"}}
'''

URLS = '''
from django.urls import include, path
urlpatterns = [path("", include("helpdesk.urls"))]
'''


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gateway-bench"


def venv_dir() -> Path:
    return cache_dir() / f"venv-{PEER.replace('==', '-')}"


def python() -> Path:
    return venv_dir() / "bin" / "python"


def ensure_venv(log=print) -> str:
    """The peer's venv (made and filled once); returns the version installed."""
    if not python().exists() or subprocess.run([str(python()), "-c", "import helpdesk, django"],
                                               capture_output=True).returncode != 0:
        log(f"installing {PEER} into {venv_dir()} (once)")
        shutil.rmtree(venv_dir(), ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv_dir())], check=True)
        subprocess.run([str(python()), "-m", "pip", "install", "-q", PEER], check=True)
    out = subprocess.run([str(python()), "-m", "pip", "show", "django-helpdesk", "django"],
                         capture_output=True, text=True, check=True).stdout
    versions = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Version:")]
    return f"django-helpdesk {versions[0]} (Django {versions[1]})"


def peer_env(site: Path) -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "DJANGO", "VIRTUAL_ENV"))}
    e["PYTHONPATH"] = os.pathsep.join([str(site), str(Path(__file__).resolve().parent.parent)])
    e["DJANGO_SETTINGS_MODULE"] = "helpdesk_bench_settings"
    e["PYTHONDONTWRITEBYTECODE"] = "1"  # the venv's byte code is there (pip); nothing written in the repository
    return e


def prepare(site: Path, maildir: Path) -> None:
    """A Django site in ``site``: settings, database migrated, one queue on ``maildir``."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "media").mkdir(exist_ok=True)
    (site / "helpdesk_bench_settings.py").write_text(
        SETTINGS.replace("@DB@", repr(str(site / "helpdesk.sqlite3"))).replace("@MEDIA@", repr(str(site / "media"))))
    (site / "helpdesk_bench_urls.py").write_text(URLS)
    subprocess.run([str(python()), "-m", "bench.peer_helpdesk", "setup", str(site), str(maildir)], cwd=site,
                   env=peer_env(site), check=True, capture_output=True)


# In the peer's Python ---------------------------------------------------------------------
def _setup(maildir: str) -> None:
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    from helpdesk.models import Queue

    Queue.objects.create(title="Helpdesk", slug="helpdesk", email_address="helpdesk@example.com",
                         allow_email_submission=True, email_box_type="local", email_box_local_dir=maildir,
                         email_box_interval=0, logging_type="none")


def _run() -> None:
    import builtins
    import functools

    import django
    from django.core import mail
    from django.core.management import call_command

    django.setup()
    import helpdesk.email

    helpdesk.email.open = functools.partial(builtins.open, encoding="latin-1")
    call_command("get_email", quiet=True)
    from helpdesk.models import FollowUp, Ticket

    print(f"tickets={Ticket.objects.count()} followups={FollowUp.objects.count()} mails={len(mail.outbox)}")


if __name__ == "__main__":
    if sys.argv[1] == "setup":
        _setup(sys.argv[3])
    elif sys.argv[1] == "run":
        _run()
