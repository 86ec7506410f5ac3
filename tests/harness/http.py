"""`gateway serve` in a subprocess with its HTTP server on a port of its own, and a
client of it over real HTTP (the operations endpoint, the API)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, wait_for_port


class HttpService:
    """`gateway serve` in a subprocess, its HTTP server on a port of its own."""

    def __init__(self, folder: Path, smtp_port: int, http_port: int):
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.pop("GATEWAY_CONFIG", None)
        env.pop("GATEWAY_HTTP_PORT", None)  # the config's port (conftest sets a free one for other tests)
        self.folder, self.smtp_port, self.http_port = folder, smtp_port, http_port
        self.log = open(folder / "service.out", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(folder / "config.toml"),
                                      "serve"], cwd=folder, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_for_port(smtp_port, proc=self.proc)
        wait_for_port(http_port, timeout=60, proc=self.proc)

    def get(self, path: str) -> tuple[int, bytes, str]:
        """(status, body, content type) of a real HTTP GET."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=30) as answer:
                return answer.status, answer.read(), answer.headers["Content-Type"]
        except urllib.error.HTTPError as error:
            return error.code, error.read(), error.headers["Content-Type"]

    def ready(self) -> tuple[int, dict]:
        status, body, _ = self.get("/readyz")
        return status, json.loads(body)

    def metrics(self) -> dict[tuple, float]:
        status, body, kind = self.get("/metrics")
        assert status == 200 and kind.startswith("text/plain; version=0.0.4"), (status, kind)
        return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in text_string_to_metric_families(body.decode()) for sample in family.samples}

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self.log.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.log.close()
