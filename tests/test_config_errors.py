"""Bad configuration never shows a traceback (issue 16, item 7): through the real command
line, each mistake an operator makes gets one line naming the key and what is wrong,
and exit status 2."""

from __future__ import annotations

import socket

import pytest

from conftest import POSTGRES_URL, free_port, run_gateway, write_config


def refused(tmp_path, *args: str, env: dict | None = None) -> str:
    """Run ``gateway ARGS``; it must exit 2 with one line saying what is wrong (after the
    log lines of what was done before, such as a new database's schema), returned."""
    proc = run_gateway(*args, cwd=tmp_path, env=env, check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 2, (proc.returncode, err, proc.stdout.decode())
    lines = err.strip().splitlines()
    assert "Traceback" not in err and [line for line in lines if line.startswith("gateway:")] == lines[-1:], err
    assert all(" INFO " in line for line in lines[:-1]), err
    return lines[-1]


@pytest.mark.parametrize("section, key", [("smtp", "port"), ("http", "port"), ("outbound.smtp", "port")])
def test_a_port_out_of_range(tmp_path, section, key):
    write_config(tmp_path, f"[{section}]\n{key} = 70000\n")
    # (The tests' environment sets the HTTP port, which the file cannot override.)
    env = {"GATEWAY_HTTP_PORT": "70000"} if section == "http" else None
    assert refused(tmp_path, "serve", env=env) == (f"gateway: configuration error: {section}.{key}: 70000 is not a port "
                                          f"number ({1 if section == 'outbound.smtp' else 0}-65535)")


@pytest.mark.parametrize("key", ["smtp.port", "http.port"])
def test_a_port_already_in_use(tmp_path, key):
    """Another program holds the port: serve stops before it starts anything."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        other = free_port()
        smtp, http = (port, other) if key == "smtp.port" else (other, port)
        write_config(tmp_path, f"[smtp]\nport = {smtp}\n[http]\nport = {http}\n")
        err = refused(tmp_path, "serve", env={"GATEWAY_HTTP_PORT": str(http)})
    assert err == (f"gateway: configuration error: {key}: 127.0.0.1:{port} is already in use (another gateway "
                   f"serve, or another program, listens there)")


@pytest.mark.postgres
def test_a_postgres_url_is_taken_for_postgresql(tmp_path, postgres_url):
    """postgres:// (libpq's, Heroku's) works as postgresql:// does."""
    url = "postgres://" + postgres_url.partition("://")[2]
    write_config(tmp_path, f'[database]\nurl = "{url}"\n')
    out = run_gateway("db", "upgrade", cwd=tmp_path)
    assert out.stdout.decode().startswith("upgraded from an empty database to ")
    assert run_gateway("ticket", "list", cwd=tmp_path).returncode == 0


@pytest.mark.postgres
def test_a_database_that_does_not_exist(tmp_path, postgres_available):
    base = POSTGRES_URL.rpartition("/")[0]
    write_config(tmp_path, f'[database]\nurl = "{base}/no_such_helpdesk_db"\n')
    for command in (["serve"], ["ticket", "list"]):
        err = refused(tmp_path, *command)
        assert err.startswith(f"gateway: configuration error: database.url: cannot open {base}/no_such_helpdesk_db: ")
        assert 'database "no_such_helpdesk_db" does not exist' in err


def test_an_unreachable_database_server(tmp_path):
    """Nothing listens on the URL's port (a server down, a wrong port)."""
    port = free_port()
    write_config(tmp_path, f'[database]\nurl = "postgresql://gateway@127.0.0.1:{port}/helpdesk"\n')
    err = refused(tmp_path, "serve")
    assert err.startswith(f"gateway: configuration error: database.url: cannot open "
                          f"postgresql://gateway@127.0.0.1:{port}/helpdesk: ")
    assert "Connection refused" in err


def test_an_unknown_gateway_environment_variable(tmp_path):
    """A misspelt override is refused by name, as an unknown key in the file is; the
    variables that are not keys but are ours stay allowed."""
    write_config(tmp_path, "")
    err = refused(tmp_path, "serve", env={"GATEWAY_SMTP_PROT": "2626"})
    assert err == ("gateway: configuration error: GATEWAY_SMTP_PROT: unknown environment variable, no key of the "
                   "config (did you mean GATEWAY_SMTP_PORT?)")
    assert refused(tmp_path, "ticket", "list", env={"GATEWAY_OUTBOUND": "smtp"}).startswith(
        "gateway: configuration error: GATEWAY_OUTBOUND: unknown environment variable")
    allowed = {"GATEWAY_CONFIG": str(tmp_path / "config.toml"), "GATEWAY_CORPUS": str(tmp_path),
               "GATEWAY_TEST_POSTGRES_URL": POSTGRES_URL, "GATEWAY_BENCH_POSTGRES_URL": POSTGRES_URL,
               "GATEWAY_SMTP_PORT": "2626", "GATEWAY_OUTBOUND_SMTP_HOST": "relay.example.com"}
    assert run_gateway("ticket", "list", cwd=tmp_path, env=allowed).returncode == 0


def test_a_mailbox_whose_password_variable_is_unset(tmp_path):
    """Refused at start, not at the first login an hour later; the name the config gives
    the variable may start with GATEWAY_ too (it is the operator's)."""
    write_config(tmp_path, f"""[smtp]
port = {free_port()}

[[mailboxes]]
name = "desk"
host = "127.0.0.1"
user = "desk"
password_env = "GATEWAY_DESK_PASSWORD"
""")
    assert refused(tmp_path, "serve") == (
        "gateway: configuration error: mailboxes[0].password_env: the environment variable GATEWAY_DESK_PASSWORD "
        "(password of mailbox 'desk') is not set")
    # Set, the variable is no unknown GATEWAY_* one: the next problem is another.
    proc = run_gateway("status", cwd=tmp_path, env={"GATEWAY_DESK_PASSWORD": "s3cret"}, check=False)
    assert proc.returncode == 1 and b"unknown environment variable" not in proc.stderr
