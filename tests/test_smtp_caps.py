"""Caps aiosmtpd lacks: connections at once (per IP and in all), and repeated commands."""

from __future__ import annotations

import smtplib
import time


from harness.door import start


def test_connections_over_the_per_ip_cap_get_421_and_a_freed_slot_is_reused(tmp_path):
    app, controller = start(tmp_path, "[smtp]\nmax_connections_per_ip = 2\n")
    try:
        first = smtplib.SMTP("127.0.0.1", controller.port, timeout=10)
        second = smtplib.SMTP("127.0.0.1", controller.port, timeout=10)
        third = smtplib.SMTP(timeout=10)
        code, text = third.connect("127.0.0.1", controller.port)
        assert code == 421 and b"Too many connections" in text
        third.close()
        # The two first still work, and once one leaves, a newcomer gets in.
        assert first.noop()[0] == 250 and second.noop()[0] == 250
        first.quit()
        deadline = time.monotonic() + 5
        while True:
            fourth = smtplib.SMTP(timeout=10)
            code, _ = fourth.connect("127.0.0.1", controller.port)
            if code == 220 or time.monotonic() > deadline:
                break
            fourth.close()
            time.sleep(0.05)
        assert code == 220
        fourth.quit()
        second.quit()
    finally:
        controller.stop()
        app.engine.dispose()


def test_endless_noop_is_cut_off(tmp_path):
    app, controller = start(tmp_path, "")
    try:
        client = smtplib.SMTP("127.0.0.1", controller.port, timeout=10)
        codes = [client.noop()[0] for _ in range(100)]
        assert set(codes) == {250}
        code, _ = client.noop()
        assert code == 421  # aiosmtpd's command_call_limit, then it hangs up
        client.close()
    finally:
        controller.stop()
        app.engine.dispose()
