"""What the tests share: real servers and the stories told with them.  A test module imports
from here (and from conftest), never from another test module (tests/test_harness_imports.py).

- door.py: the SMTP door on a free port; a raw-socket SMTP dialogue
- relay.py: a scripted SMTP relay for outbound delivery, its config
- service.py: `gateway serve` in a subprocess
- dovecot.py: a real Dovecot IMAP server (and its fixtures); imap.py: a gateway reading it
- postfix.py: a Postfix instance of its own
- browser.py: headless Chromium for the pages
- ingest.py: a gateway on a database, mails stored and processed as the door would
- replies.py: first mails and replies as mail clients write them
- corpus.py: the corpus of real mails and the checks run on each
- readme.py: blocks of the README the tests run
"""
