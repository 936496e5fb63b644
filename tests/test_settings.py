from __future__ import annotations

from datetime import timedelta
from ipaddress import ip_network

import pytest

from keel.settings import ConfigError, RatePolicy, load_settings, parse_duration

SECRET = "s" * 32


def test_defaults_are_the_embedded_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "REDIS_URL", "KEEL_ENV", "KEEL_PORT", "KEEL_RATE_LIMIT"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(_env_file=None)
    assert settings.database_url == "sqlite+aiosqlite:///./var/keel.db"
    assert settings.redis_url is None
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 3000, 1)
    assert settings.access_token_ttl == timedelta(minutes=15)
    assert settings.refresh_token_ttl == timedelta(days=30)
    assert settings.refresh_grace == timedelta(seconds=10)
    assert settings.rate_limit == RatePolicy(limit=10, period=1, burst=20)
    assert settings.auth_rate_limit == RatePolicy(limit=5, period=60, burst=10)
    assert settings.cors_origins == ()
    assert settings.max_body_bytes == 1_048_576
    assert settings.database_wait == timedelta(seconds=30)
    assert settings.shutdown_delay == timedelta(0)


def test_values_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@db:5432/keel")
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/0")
    monkeypatch.setenv("KEEL_CORS_ORIGINS", "https://a.example, http://localhost:5173")
    monkeypatch.setenv("KEEL_TRUSTED_PROXIES", "10.0.0.0/8,::1")
    monkeypatch.setenv("KEEL_PROXY_HEADER", "x-real-ip")
    monkeypatch.setenv("KEEL_ACCESS_TOKEN_TTL", "90s")
    monkeypatch.setenv("KEEL_RATE_LIMIT", "100/min burst 5")
    monkeypatch.setenv("KEEL_DATABASE_WAIT", "2m")
    monkeypatch.setenv("KEEL_SHUTDOWN_DELAY", "1500ms")
    settings = load_settings(_env_file=None)
    assert (settings.database_wait, settings.shutdown_delay) == (timedelta(minutes=2), timedelta(seconds=1.5))
    assert settings.database_url == "postgresql+asyncpg://u@db:5432/keel"
    assert settings.redis_url == "redis://cache:6379/0"
    assert settings.cors_origins == ("https://a.example", "http://localhost:5173")
    assert settings.trusted_proxies == (ip_network("10.0.0.0/8"), ip_network("::1/128"))
    assert settings.proxy_header == "X-Real-IP"  # header names are case-insensitive
    assert settings.access_token_ttl == timedelta(seconds=90)
    assert settings.rate_limit is not None
    assert settings.rate_limit.emission_interval == pytest.approx(0.6)
    assert str(settings.rate_limit) == "100/min burst 5"


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("DATABASE_URL", "mysql://x/y", "DATABASE_URL"),
        ("REDIS_URL", "http://cache", "REDIS_URL"),
        ("KEEL_ENV", "staging", "KEEL_ENV"),
        ("KEEL_PORT", "http", "KEEL_PORT"),
        ("KEEL_PORT", "70000", "KEEL_PORT"),
        ("KEEL_WORKERS", "0", "KEEL_WORKERS"),
        ("KEEL_JWT_SECRET", "short", "KEEL_JWT_SECRET"),
        ("KEEL_ACCESS_TOKEN_TTL", "soon", "KEEL_ACCESS_TOKEN_TTL"),
        ("KEEL_REFRESH_TOKEN_TTL", "0s", "KEEL_REFRESH_TOKEN_TTL"),
        ("KEEL_RATE_LIMIT", "lots", "KEEL_RATE_LIMIT"),
        ("KEEL_AUTH_RATE_LIMIT", "0/s", "KEEL_AUTH_RATE_LIMIT"),
        ("KEEL_TRUSTED_PROXIES", "10.0.0.0/33", "KEEL_TRUSTED_PROXIES"),
        ("KEEL_PROXY_HEADER", "X-Client-IP", "KEEL_PROXY_HEADER"),
        ("KEEL_CORS_ORIGINS", "not an origin", "KEEL_CORS_ORIGINS"),
        ("KEEL_MAX_BODY_BYTES", "-1", "KEEL_MAX_BODY_BYTES"),
        ("KEEL_WS_SEND_QUEUE", "0", "KEEL_WS_SEND_QUEUE"),
        ("KEEL_MAX_STREAMS_PER_USER", "0", "KEEL_MAX_STREAMS_PER_USER"),
        ("KEEL_LOG_FORMAT", "xml", "KEEL_LOG_FORMAT"),
        ("KEEL_LOG_LEVEL", "loud", "KEEL_LOG_LEVEL"),
        ("KEEL_DATABASE_WAIT", "0", "KEEL_DATABASE_WAIT"),
        ("KEEL_SHUTDOWN_DELAY", "-1s", "KEEL_SHUTDOWN_DELAY"),
        ("OTEL_TRACES_SAMPLER", "sometimes", "OTEL_TRACES_SAMPLER"),
        ("OTEL_TRACES_SAMPLER_ARG", "2", "OTEL_TRACES_SAMPLER_ARG"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, says: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as error:
        load_settings(_env_file=None)
    message = str(error.value)
    assert message.startswith(says)
    assert "\n" not in message


def test_a_secret_is_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEL_JWT_SECRET", "hunter2-short")
    with pytest.raises(ConfigError) as error:
        load_settings(_env_file=None)
    assert "hunter2" not in str(error.value)


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"KEEL_JWT_SECRET": SECRET}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgresql+asyncpg://db/keel"}, "KEEL_JWT_SECRET"),
        (
            {"DATABASE_URL": "postgresql+asyncpg://db/keel", "KEEL_JWT_SECRET": SECRET, "KEEL_CORS_ORIGINS": "*"},
            "KEEL_CORS_ORIGINS",
        ),
        # no SMTP server: reset and verification mails would go to var/mail/ on some pod's disk
        ({"DATABASE_URL": "postgresql+asyncpg://db/keel", "KEEL_JWT_SECRET": SECRET}, "KEEL_SMTP_URL"),
    ],
)
def test_production_refuses_unsafe_settings(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], says: str) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("KEEL_JWT_SECRET", raising=False)
    monkeypatch.setenv("KEEL_ENV", "production")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=says):
        load_settings(_env_file=None)


def test_production_accepts_safe_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEL_ENV", "PRODUCTION")
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://db/keel")
    monkeypatch.setenv("KEEL_JWT_SECRET", SECRET)
    monkeypatch.setenv("KEEL_CORS_ORIGINS", "https://app.example")
    monkeypatch.setenv("KEEL_SMTP_URL", "smtp://keel:pass@mail.example.com:587")
    assert load_settings(_env_file=None).env == "production"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("KEEL_SMTP_URL", "http://user:hunter2@mail.example.com"),
        ("KEEL_SMTP_URL", "smtp://user:hunter2@mail.example.com:port"),
        ("KEEL_MAIL_FROM", "no address"),
        ("KEEL_PUBLIC_URL", "keel.example.com"),
    ],
)
def test_mail_settings_are_checked_and_the_smtp_password_never_echoed(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as error:
        load_settings(_env_file=None)
    assert str(error.value).startswith(variable)
    assert "hunter2" not in str(error.value)


@pytest.mark.parametrize(
    ("text", "seconds"), [("15m", 900), ("30d", 2_592_000), ("20s", 20), ("500ms", 0.5), ("2h", 7200), ("45", 45)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize(
    ("text", "policy"),
    [
        ("10/s burst 20", RatePolicy(10, 1, 20)),
        ("5/min burst 10", RatePolicy(5, 60, 10)),
        ("100/h", RatePolicy(100, 3600, 100)),
    ],
)
def test_rate_policies(text: str, policy: RatePolicy) -> None:
    assert RatePolicy.parse(text) == policy


def test_dotenv_in_the_working_directory_is_read(
    tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KEEL_PORT", raising=False)
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]
    (tmp_path / ".env").write_text("KEEL_PORT=4321\n")  # type: ignore[operator]
    assert load_settings().port == 4321


def test_a_named_sampler_is_read_as_the_sdk_reads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", " ParentBased_TraceIdRatio ")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.5")
    settings = load_settings(_env_file=None)
    assert (settings.otel_traces_sampler, settings.otel_sample_ratio) == ("parentbased_traceidratio", None)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "half")  # a ratio sampler's argument is a ratio
    with pytest.raises(ConfigError, match=r"^OTEL_TRACES_SAMPLER_ARG"):
        load_settings(_env_file=None)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")  # which takes none: ignored, as the SDK ignores it
    assert load_settings(_env_file=None).otel_traces_sampler == "always_on"
