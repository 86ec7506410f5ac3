"""An IMAP mailbox's connection: its secret (a password from the environment or a file, or
an OAuth2 token from a command), connecting and logging in, and the folder operations the
importer uses (ensure a folder, move a message)."""

from __future__ import annotations

import logging
import os
import shlex
import ssl
import subprocess
from collections.abc import Mapping

from imapclient import IMAPClient, SocketTimeout
from imapclient.exceptions import IMAPClientError

from gateway.config import MailboxSection
from gateway.errors import GatewayError


log = logging.getLogger("gateway.imap")


TIMEOUT = SocketTimeout(connect=15.0, read=120.0)


class ImapConfigError(GatewayError):
    """The mailbox's settings cannot work (no password, token command failed)."""


def secret_for(box: MailboxSection, env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """("password"|"xoauth2", secret) for ``box``; ImapConfigError saying what is missing."""
    env = os.environ if env is None else env
    if box.oauth2_token_command:
        try:
            proc = subprocess.run(shlex.split(box.oauth2_token_command), capture_output=True, timeout=60, text=True)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ImapConfigError(f"oauth2_token_command could not run: {exc}") from exc
        token = proc.stdout.strip()
        if proc.returncode != 0 or not token:
            raise ImapConfigError(f"oauth2_token_command exited {proc.returncode} without a token: "
                                  f"{proc.stderr.strip()[:300]}")
        return "xoauth2", token
    if box.password_env:
        value = env.get(box.password_env)
        if not value:
            raise ImapConfigError(f"environment variable {box.password_env} (password_env) is not set")
        return "password", value
    if box.password_file:
        try:
            with open(os.path.expanduser(box.password_file), encoding="utf-8") as fh:
                value = fh.readline().rstrip("\r\n")
        except OSError as exc:
            raise ImapConfigError(f"password_file {box.password_file} cannot be read: {exc.strerror}") from exc
        if not value:
            raise ImapConfigError(f"password_file {box.password_file} is empty")
        return "password", value
    raise ImapConfigError("no password_env, password_file or oauth2_token_command is set")


def connect(box: MailboxSection, ssl_context: ssl.SSLContext | None = None) -> IMAPClient:
    """A connected (not logged in) client: TCP, TLS as configured, greeting read."""
    context = ssl_context or ssl.create_default_context()
    if box.security == "tls":
        return IMAPClient(box.host, port=box.port, ssl=True, ssl_context=context, timeout=TIMEOUT)
    client = IMAPClient(box.host, port=box.port, ssl=False, timeout=TIMEOUT)
    if box.security == "starttls":
        client.starttls(context)
    return client


def login(client: IMAPClient, box: MailboxSection, env: Mapping[str, str] | None = None) -> None:
    kind, secret = secret_for(box, env)
    if kind == "xoauth2":
        client.oauth2_login(box.user, secret)
    else:
        client.login(box.user, secret)


def open_mailbox(box: MailboxSection, env: Mapping[str, str] | None = None) -> IMAPClient:
    client = connect(box)
    try:
        login(client, box, env)
    except BaseException:
        close_quietly(client)
        raise
    return client


def close_quietly(client: IMAPClient) -> None:
    """Log out if the connection still works; just drop it otherwise."""
    try:
        client.logout()
    except Exception:  # noqa: BLE001 - the connection may be gone already
        try:
            client.shutdown()
        except Exception:  # noqa: BLE001
            pass


def _drop(client: IMAPClient) -> None:
    try:
        client.shutdown()
    except Exception:  # noqa: BLE001
        pass


def ensure_folder(client: IMAPClient, folder: str) -> None:
    if not client.folder_exists(folder):
        log.info("creating IMAP folder %r", folder)
        try:
            client.create_folder(folder)
        except IMAPClientError:
            if not client.folder_exists(folder):  # another poller may have made it meanwhile
                raise


def move(client: IMAPClient, uid: int, folder: str) -> None:
    """Move one message: MOVE where offered; else COPY, flag \\Deleted, and expunge that
    message only (UID EXPUNGE, RFC 4315) or, without UIDPLUS, the folder's deleted ones."""
    if client.has_capability("MOVE"):
        client.move([uid], folder)
        return
    client.copy([uid], folder)
    client.delete_messages([uid], silent=True)
    if client.has_capability("UIDPLUS"):
        client.uid_expunge([uid])
    else:
        client.expunge()
