"""The command line runs at all, with and without a config file."""

from conftest import run_gateway


def test_help_lists_the_commands(tmp_path):
    out = run_gateway("--help", cwd=tmp_path).stdout.decode()
    for command in ("serve", "ingest", "ticket", "outbox"):
        assert command in out


def test_unknown_config_key_is_named(tmp_path):
    (tmp_path / "bad.toml").write_text("[smtp]\nprot = 25\n")
    proc = run_gateway("--config", str(tmp_path / "bad.toml"), "ticket", "list", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "prot" in proc.stderr.decode() and "[smtp]" in proc.stderr.decode()
