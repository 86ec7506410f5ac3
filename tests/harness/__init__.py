"""Real servers for the tests, shared by any test that needs one (tests/harness/postfix.py:
a Postfix instance of its own).  Older fixtures still live beside the tests
(tests/dovecot.py, tests/conftest.py)."""
