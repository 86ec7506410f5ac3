"""The browser harness itself: Debian's Chromium, driven by Playwright, renders a page
served on loopback and runs its script (the pages' tests rely on both)."""

from __future__ import annotations

import http.server
import threading

from harness.browser import browser, shot


def test_chromium_renders_a_local_page_and_runs_its_script(tmp_path):
    (tmp_path / "index.html").write_text("<!doctype html><title>t</title><p id=p>before</p>"
                                         "<script>document.getElementById('p').textContent = 'after'</script>")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with browser() as chromium:
            page = chromium.new_page()
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/index.html")
            assert page.text_content("#p") == "after"
            assert shot(page, tmp_path / "shots", "index").stat().st_size > 0
    finally:
        server.shutdown()
