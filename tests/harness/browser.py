"""A real headless Chromium for the web pages' tests: Debian's ``chromium``, driven by
Playwright (from PyPI; its own browser download cannot reach the internet here).

``browser()`` yields a Playwright Browser launched with that executable, as root needs
(``--no-sandbox``) and a closed network wants (no background networking, no component
updates, no first-run, a fresh profile).  Under CI a missing Chromium fails; elsewhere
the test skips saying why.  ``shot(page, folder, name)`` keeps a page's screenshot as a
test artifact.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-default-apps", "--disable-extensions"]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@contextmanager
def browser():
    """A headless Chromium (Playwright's Browser) for the time of the block."""
    path = chromium_path()
    if path is None:
        problem = "Debian's chromium is not installed (scripts/test installs it when missing)"
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield launched
        finally:
            launched.close()


def shot(page, folder: Path, name: str) -> Path:
    """Keep a screenshot of ``page`` as ``folder/name.png`` (a test artifact)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
