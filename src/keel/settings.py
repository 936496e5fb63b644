"""Settings: the only module that reads the environment (SPEC §1)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from datetime import timedelta
from email.utils import parseaddr
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
ProxyHeader = Literal["X-Forwarded-For", "Forwarded", "X-Real-IP"]
OtlpProtocol = Literal["http/protobuf", "grpc"]  # the two OTLP exporters keel ships
# the samplers OTEL_TRACES_SAMPLER may name (the SDK's own); keel builds them from settings, so .env reaches them too
OtelSampler = Literal[
    "always_on",
    "always_off",
    "parentbased_always_on",
    "parentbased_always_off",
    "traceidratio",
    "parentbased_traceidratio",
]
_PROXY_HEADERS: dict[str, ProxyHeader] = {name.lower(): name for name in ("X-Forwarded-For", "Forwarded", "X-Real-IP")}

_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|min|h|d)?\s*$")
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_POLICY = re.compile(r"^\s*(\d+)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*(?:burst\s+(\d+))?\s*$")
_PERIODS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(:\d{1,5})?$|^\*$")


def parse_duration(value: object) -> timedelta:
    """`15m`, `30d`, `20s`, `500ms` or a bare number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"expected a duration like 15m, 30d or 20s, got {value!r}")
        seconds = int(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {value!r}")
    return timedelta(seconds=seconds)


@dataclass(frozen=True, slots=True)
class RatePolicy:
    """`limit` requests per `period` seconds, `burst` of them back to back (GCRA, SPEC §5)."""

    limit: int
    period: int
    burst: int
    # the GCRA's emission interval in whole ms (at least 1), which every check needs: worked out once, here
    interval_ms: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.limit < 1 or self.burst < 1:
            raise ValueError(f"rate and burst must be at least 1, got {self}")
        object.__setattr__(self, "interval_ms", max(1, round(self.period * 1000 / self.limit)))

    @classmethod
    def parse(cls, value: object) -> RatePolicy:
        if isinstance(value, RatePolicy):
            return value
        match = _POLICY.match(str(value))
        if not match:
            raise ValueError(f"expected a policy like '10/s burst 20' or '5/min burst 10', or off; got {value!r}")
        limit, period, burst = int(match.group(1)), _PERIODS[match.group(2)], match.group(3)
        return cls(limit=limit, period=period, burst=int(burst) if burst else limit)

    @property
    def emission_interval(self) -> float:
        """Seconds between two requests at the sustained rate."""
        return self.period / self.limit

    def __str__(self) -> str:
        unit = {1: "s", 60: "min", 3600: "h"}[self.period]
        return f"{self.limit}/{unit} burst {self.burst}"


def _comma_list(value: object) -> list[str]:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, list | tuple):
        return [str(item).strip() for item in value]
    raise ValueError("expected a comma-separated list")


class Settings(BaseSettings):
    """Every variable of SPEC §1; field aliases are the variable names."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        frozen=True,
    )

    database_url: str = Field("sqlite+aiosqlite:///./var/keel.db", validation_alias="DATABASE_URL")
    redis_url: str | None = Field(None, validation_alias="REDIS_URL")
    env: Literal["development", "production"] = Field("development", validation_alias="KEEL_ENV")
    host: str = Field("127.0.0.1", validation_alias="KEEL_HOST", min_length=1)
    port: int = Field(3000, validation_alias="KEEL_PORT", ge=1, le=65535)
    workers: int = Field(1, validation_alias="KEEL_WORKERS", ge=1, le=256)
    # uvicorn: the least memory per WebSocket and SSE stream; granian: the least CPU per plain HTTP request
    # (keel.http.granian; deploy/ runs both, realtime on uvicorn)
    server: Literal["uvicorn", "granian"] = Field("uvicorn", validation_alias="KEEL_SERVER")

    jwt_secret: SecretStr | None = Field(None, validation_alias="KEEL_JWT_SECRET")
    jwt_private_key_file: Path | None = Field(None, validation_alias="KEEL_JWT_PRIVATE_KEY_FILE")
    jwt_public_keys_dir: Path | None = Field(None, validation_alias="KEEL_JWT_PUBLIC_KEYS_DIR")
    jwt_issuer: str = Field("keel", validation_alias="KEEL_JWT_ISSUER", min_length=1)
    jwt_audience: str = Field("keel-api", validation_alias="KEEL_JWT_AUDIENCE", min_length=1)
    access_token_ttl: timedelta = Field(timedelta(minutes=15), validation_alias="KEEL_ACCESS_TOKEN_TTL")
    refresh_token_ttl: timedelta = Field(timedelta(days=30), validation_alias="KEEL_REFRESH_TOKEN_TTL")
    # how long the last-spent refresh token of a family may be presented again (a lost response, SPEC §4)
    refresh_grace: timedelta = Field(timedelta(seconds=10), validation_alias="KEEL_REFRESH_GRACE")
    # how long `keel serve` waits at start-up for a database that does not answer yet, retrying with backoff
    database_wait: timedelta = Field(timedelta(seconds=30), validation_alias="KEEL_DATABASE_WAIT")
    # on SIGTERM: how long /readyz answers 503 before the listener closes (keel.http.shutdown); 0 under Kubernetes
    shutdown_delay: timedelta = Field(timedelta(0), validation_alias="KEEL_SHUTDOWN_DELAY")

    # None ("off"): no limiting by keel, for deployments whose gateway already limits
    rate_limit: Annotated[RatePolicy | None, NoDecode] = Field(
        RatePolicy(10, 1, 20), validation_alias="KEEL_RATE_LIMIT"
    )
    auth_rate_limit: Annotated[RatePolicy | None, NoDecode] = Field(
        RatePolicy(5, 60, 10), validation_alias="KEEL_AUTH_RATE_LIMIT"
    )
    trusted_proxies: Annotated[tuple[IPNetwork, ...], NoDecode] = Field((), validation_alias="KEEL_TRUSTED_PROXIES")
    # the one forwarding header the trusted proxies write; the others are the client's and ignored (SPEC §5)
    proxy_header: ProxyHeader = Field("X-Forwarded-For", validation_alias="KEEL_PROXY_HEADER")
    cors_origins: Annotated[tuple[str, ...], NoDecode] = Field((), validation_alias="KEEL_CORS_ORIGINS")
    max_body_bytes: int = Field(1_048_576, validation_alias="KEEL_MAX_BODY_BYTES", ge=1)
    ws_send_queue: int = Field(256, validation_alias="KEEL_WS_SEND_QUEUE", ge=1)
    # open WebSockets + SSE streams per user, per process: each holds memory and a feed reference until it closes
    max_streams_per_user: int = Field(50, validation_alias="KEEL_MAX_STREAMS_PER_USER", ge=1)

    # OpenTelemetry: the SDK reads its other OTEL_* variables itself (timeouts, headers, TLS, resource), and keel's
    # export queue the batching ones; these are what keel decides on, so a .env file reaches them too: an endpoint
    # turns tracing on, the protocol picks the exporter, and without a sampler keel's default (parent-based, 10 %
    # of new traces) applies
    otel_exporter_otlp_endpoint: str | None = Field(None, validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT")
    otel_exporter_otlp_traces_endpoint: str | None = Field(None, validation_alias="OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    otel_exporter_otlp_protocol: OtlpProtocol = Field("http/protobuf", validation_alias="OTEL_EXPORTER_OTLP_PROTOCOL")
    otel_exporter_otlp_traces_protocol: OtlpProtocol | None = Field(
        None, validation_alias="OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
    )
    otel_traces_sampler: OtelSampler | None = Field(None, validation_alias="OTEL_TRACES_SAMPLER")
    otel_traces_sampler_arg: str | None = Field(None, validation_alias="OTEL_TRACES_SAMPLER_ARG")

    # outgoing mail (SPEC §4): unset in development, each mail becomes an .eml file under var/mail/
    smtp_url: SecretStr | None = Field(None, validation_alias="KEEL_SMTP_URL")  # may carry the SMTP password
    mail_from: str = Field("keel@localhost", validation_alias="KEEL_MAIL_FROM")
    public_url: str = Field("http://127.0.0.1:3000", validation_alias="KEEL_PUBLIC_URL")

    log_format: Literal["console", "json"] | None = Field(None, validation_alias="KEEL_LOG_FORMAT")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", validation_alias="KEEL_LOG_LEVEL")

    @field_validator("database_url", mode="before")
    @classmethod
    def _database_url(cls, value: object) -> str:
        url = str(value).strip()
        # accept the spellings people paste from their provider and pick keel's async drivers
        for prefix, driver in (
            ("postgres://", "postgresql+asyncpg://"),
            ("postgresql://", "postgresql+asyncpg://"),
            ("sqlite://", "sqlite+aiosqlite://"),
        ):
            if url.startswith(prefix):
                url = driver + url[len(prefix) :]
        if not url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
            raise ValueError("expected postgresql+asyncpg://… or sqlite+aiosqlite:///…")
        return url

    @field_validator("redis_url", mode="before")
    @classmethod
    def _redis_url(cls, value: object) -> str | None:
        if value is None or str(value).strip() == "":
            return None
        url = str(value).strip()
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("expected redis://host:port/db, rediss://… or unix://…")
        return url

    @field_validator(
        "otel_exporter_otlp_endpoint",
        "otel_exporter_otlp_traces_endpoint",
        "otel_exporter_otlp_traces_protocol",
        "otel_traces_sampler_arg",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # OTEL_*= (empty) means unset in the OpenTelemetry spec
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("env", "log_level", "log_format", "otel_traces_sampler", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() or None if isinstance(value, str) else value

    @field_validator("access_token_ttl", "refresh_token_ttl", "refresh_grace", "database_wait", mode="before")
    @classmethod
    def _duration(cls, value: object) -> timedelta:
        return parse_duration(value)

    @field_validator("shutdown_delay", mode="before")
    @classmethod
    def _delay(cls, value: object) -> timedelta:
        return timedelta(0) if str(value).strip() in ("0", "0s", "0ms") else parse_duration(value)

    @field_validator("rate_limit", "auth_rate_limit", mode="before")
    @classmethod
    def _policy(cls, value: object) -> RatePolicy | None:
        if value is None or (isinstance(value, str) and value.strip().lower() == "off"):
            return None
        return RatePolicy.parse(value)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _networks(cls, value: object) -> tuple[IPNetwork, ...]:
        try:
            return tuple(ipaddress.ip_network(item, strict=False) for item in _comma_list(value))
        except ValueError as exc:
            raise ValueError(f"expected comma-separated CIDRs like 10.0.0.0/8: {exc}") from None

    @field_validator("proxy_header", mode="before")
    @classmethod
    def _proxy_header(cls, value: object) -> object:
        # header names are case-insensitive; anything else is left for the Literal to refuse, naming the choices
        return _PROXY_HEADERS.get(value.strip().lower(), value) if isinstance(value, str) else value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, value: object) -> tuple[str, ...]:
        origins = tuple(origin.rstrip("/") for origin in _comma_list(value))
        for origin in origins:
            if not _ORIGIN.match(origin):
                raise ValueError(f"expected origins like https://app.example.com, got {origin!r}")
        return origins

    @field_validator("smtp_url", mode="before")
    @classmethod
    def _smtp_url(cls, value: object) -> object:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value is None or str(value).strip() == "":
            return None
        url = urlsplit(str(value).strip())
        # the message never repeats the value: it may hold the SMTP password
        if url.scheme not in ("smtp", "smtps") or not url.hostname:
            raise ValueError("expected smtp://user:password@host:587 (STARTTLS when offered) or smtps://…@host:465")
        try:
            url.port  # noqa: B018 (raises on a port that is not a number)
        except ValueError:
            raise ValueError("the port must be a number from 1 to 65535") from None
        return str(value).strip()

    @field_validator("mail_from", mode="before")
    @classmethod
    def _mail_from(cls, value: object) -> str:
        _, address = parseaddr(str(value).strip())
        if "@" not in address or any(c in str(value) for c in "\r\n"):
            raise ValueError(f"expected an address like keel@example.com or 'keel <keel@example.com>', got {value!r}")
        return str(value).strip()

    @field_validator("public_url", mode="before")
    @classmethod
    def _public_url(cls, value: object) -> str:
        url = str(value).strip().rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(f"expected the URL clients reach keel at, like https://keel.example.com, got {value!r}")
        return url

    @field_validator("jwt_secret")
    @classmethod
    def _secret_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < 32:
            raise ValueError("must be at least 32 bytes")
        return value

    @model_validator(mode="after")
    def _sample_ratio(self) -> Settings:
        # keel's default sampler (no OTEL_TRACES_SAMPLER) and the SDK's two ratio samplers take a ratio
        takes_ratio = self.otel_traces_sampler in (None, "traceidratio", "parentbased_traceidratio")
        if takes_ratio and self.otel_traces_sampler_arg is not None:
            ratio = self.otel_traces_sampler_arg
            try:
                valid = 0.0 <= float(ratio) <= 1.0
            except ValueError:
                valid = False
            if not valid:
                raise ValueError(f"OTEL_TRACES_SAMPLER_ARG: expected a ratio from 0 to 1, got {ratio!r}")
        return self

    @property
    def otel_sample_ratio(self) -> float | None:
        """The ratio of new traces keel's default sampler keeps; None when OTEL_TRACES_SAMPLER names another."""
        if self.otel_traces_sampler is not None:
            return None
        return 0.1 if self.otel_traces_sampler_arg is None else float(self.otel_traces_sampler_arg)

    @model_validator(mode="after")
    def _production_is_safe(self) -> Settings:
        if self.env != "production":
            return self
        if self.is_sqlite:
            raise ValueError("DATABASE_URL: KEEL_ENV=production refuses SQLite; use postgresql+asyncpg://…")
        if self.jwt_secret is None and self.jwt_private_key_file is None:
            raise ValueError(
                "KEEL_JWT_SECRET: KEEL_ENV=production refuses a generated key; set KEEL_JWT_SECRET "
                "(at least 32 bytes) or KEEL_JWT_PRIVATE_KEY_FILE"
            )
        if "*" in self.cors_origins:
            raise ValueError("KEEL_CORS_ORIGINS: KEEL_ENV=production refuses '*'; list the allowed origins")
        if self.smtp_url is None:
            raise ValueError(
                "KEEL_SMTP_URL: KEEL_ENV=production refuses to start without it (password resets and verifications "
                "would never reach anyone); set smtp://user:password@host:587 or smtps://…"
            )
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


class ConfigError(Exception):
    """Configuration that keel refuses to start with; the message is one line naming the variable."""


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment and `.env`, or ConfigError with one line naming the bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(describe(exc)) from None
    except SettingsError as exc:  # a value the source itself could not parse; name the variable, not the field
        field = str(exc).split('"')[1] if '"' in str(exc) else ""
        info = Settings.model_fields.get(field)
        name = info.validation_alias if info is not None and isinstance(info.validation_alias, str) else field
        raise ConfigError(f"{name}: could not be parsed") from None


def describe(exc: ValidationError) -> str:
    """One line per ValidationError, each naming its environment variable."""
    parts = []
    for error in exc.errors(include_url=False):
        names = [str(part) for part in error["loc"] if isinstance(part, str)]
        message = error["msg"].removeprefix("Value error, ")
        if names:
            value = error.get("input")
            secret = "SECRET" in names[0] or names[0] == "KEEL_SMTP_URL"  # the SMTP URL may carry a password
            shown = f" (got {value!r})" if isinstance(value, str | int) and not secret else ""
            parts.append(f"{names[0]}: {message}{shown}")
        else:
            parts.append(message)
    return "; ".join(parts)
