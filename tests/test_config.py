"""Configuration: embedded defaults, the documented file, the environment, and errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent


def _leaf_keys(cls, prefix=""):
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == "base_dir":
            continue
        tp = hints[f.name]
        args = typing.get_args(tp)
        if dataclasses.is_dataclass(tp):
            yield from _leaf_keys(tp, f"{prefix}{f.name}.")
        elif args and dataclasses.is_dataclass(args[0]):
            yield from _leaf_keys(args[0], f"{prefix}{f.name}[].")
        else:
            yield prefix + f.name


def test_config_toml_documents_every_default():
    from gateway.config import Config

    shipped = load_config(ROOT / "config.toml", env={})
    assert dataclasses.replace(shipped, base_dir=".") == dataclasses.replace(Config(), base_dir=".")
    text = (ROOT / "config.toml").read_text()
    for key in _leaf_keys(Config):
        assert f"{key.rsplit('.', 1)[-1]} =" in text, f"config.toml does not document {key}"


def test_environment_overrides_a_key(tmp_path):
    cfg = load_config(None, env={"GATEWAY_DATABASE_URL": "postgresql://x@db/y", "GATEWAY_SMTP_PORT": "2626",
                                 "GATEWAY_OUTBOUND_SMTP_HOST": "relay.example.com",
                                 "GATEWAY_GATEWAY_ADDRESSES": "a@example.com, b@example.com"})
    assert cfg.database_url == "postgresql://x@db/y"
    assert cfg.smtp.port == 2626
    assert cfg.outbound.smtp.host == "relay.example.com"
    assert cfg.gateway.addresses == ("a@example.com", "b@example.com")


@pytest.mark.parametrize("text, named", [
    ("[smtp]\nprot = 25\n", "prot"),
    ("[smtpp]\nport = 25\n", "smtpp"),
    ("[smtp]\nport = \"twenty\"\n", "smtp.port"),
    ("[outbound]\ntransport = \"pigeon\"\n", "outbound.transport"),
    ("[routing]\nroutes = { \"a@b\" = \"problem\" }\n", "routing.routes"),
    ("[smtp\n", "not valid TOML"),
])
def test_wrong_key_is_named(tmp_path, text, named):
    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(ConfigError, match=named.replace(".", r"\.").replace("[", r"\[")):
        load_config(tmp_path / "c.toml", env={})


def test_wrong_environment_value_is_named():
    with pytest.raises(ConfigError, match="GATEWAY_SMTP_PORT"):
        load_config(None, env={"GATEWAY_SMTP_PORT": "lots"})


def test_relative_paths_follow_the_config_file(tmp_path):
    (tmp_path / "c.toml").write_text('[gateway]\ndata_dir = "data"\n')
    cfg = load_config(tmp_path / "c.toml", env={})
    assert cfg.data_dir == tmp_path / "data"
    assert cfg.database_url == f"sqlite:///{tmp_path / 'data' / 'gateway.db'}"
