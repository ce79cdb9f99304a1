"""Settings: defaults, then the config file, then EVR_* variables."""

from pathlib import Path

import pytest

from evr.config import Settings


def test_defaults_file_then_environment(tmp_path):
    (tmp_path / "evr.toml").write_text('link_ttl_hours = 24\nport = 9000\nnotifier = "outbox"\n')
    settings = Settings.load(data_dir=tmp_path, environ={"EVR_PORT": "9100", "EVR_SECURE_COOKIES": "yes"})
    assert settings.link_ttl_hours == 24
    assert settings.port == 9100
    assert settings.secure_cookies is True
    assert settings.db_url == f"sqlite+aiosqlite:///{(tmp_path / 'evr.sqlite3').resolve()}"
    assert Settings.load(data_dir=tmp_path, environ={"EVR_DATABASE_URL": "postgresql+asyncpg://x/y"}).db_url \
        == "postgresql+asyncpg://x/y"


def test_a_misspelt_setting_is_an_error_not_ignored(tmp_path):
    (tmp_path / "evr.toml").write_text("link_ttl_hour = 24\n")
    with pytest.raises(ValueError, match="link_ttl_hour"):
        Settings.load(data_dir=tmp_path, environ={})


def test_default_data_dir():
    assert Settings.load(environ={}).data_dir == Path("evr-data")


@pytest.mark.parametrize("name", ["timezone", "statement_timezone"])
def test_a_time_zone_that_does_not_exist_is_an_error(tmp_path, name):
    with pytest.raises(ValueError, match=f"{name}: 'Europe/Londres' is not a time zone"):
        Settings.load(data_dir=tmp_path, environ={f"EVR_{name.upper()}": "Europe/Londres"})
    assert getattr(Settings.load(data_dir=tmp_path, environ={f"EVR_{name.upper()}": "Europe/Dublin"}),
                   name) == "Europe/Dublin"
