"""relay.config: one settings object read from RELAY_* variables, refused when unusable."""

from __future__ import annotations

from dataclasses import fields

import pytest

from relay.config import ConfigError, Settings

#: A value for each variable, unlike its default, and the setting it must give.
VALUES: dict[str, tuple[str, object]] = {
    "RELAY_BACKEND": ("shop.relay:Backend", "shop.relay:Backend"),
    "RELAY_WSGI_APP": ("shop.wsgi:application", "shop.wsgi:application"),
    "RELAY_ALLOWED_ORIGINS": (
        " https://a.example , https://b.example,, ",
        ("https://a.example", "https://b.example"),
    ),
    "RELAY_MAX_MESSAGE_BYTES": ("2048", 2048),
    "RELAY_PERMESSAGE_DEFLATE": ("off", False),
    "RELAY_DEFLATE_THRESHOLD": ("0", 0),
    "RELAY_SEND_BUFFER_BYTES": ("65536", 65536),
    "RELAY_WORKER_CONNECTIONS": (" 20 ", 20),
    "RELAY_HEARTBEAT_INTERVAL": ("2.5", 2.5),
    "RELAY_HEARTBEAT_TIMEOUT": ("0", 0.0),
    "RELAY_SOCKJS_HEARTBEAT": ("5", 5.0),
    "RELAY_SOCKJS_HTTP": ("false", False),
    "RELAY_SOCKJS_RESPONSE_LIMIT": ("4096", 4096),
    "RELAY_SOCKJS_DISCONNECT_DELAY": ("2.5", 2.5),
    "RELAY_HANDSHAKE_TIMEOUT": ("1e1", 10.0),
    "RELAY_MAX_SUBS_PER_SESSION": ("7", 7),
    "RELAY_MAX_PENDING_MESSAGES": ("9", 9),
    "RELAY_MAX_PENDING_BYTES": ("2097152", 2_097_152),
    "RELAY_MAX_WORKER_PENDING_BYTES": ("8388608", 8_388_608),
    "RELAY_MAX_WORKER_SEND_BYTES": ("16777216", 16_777_216),
    "RELAY_INBOUND_BYTES_PER_ADDRESS": ("0", 0),
    "RELAY_BACKEND_CONCURRENCY": ("3", 3),
    "RELAY_MAX_UNBLOCKED_METHODS": ("0", 0),
    "RELAY_DATABASE_URL": ("postgresql://db/relay", "postgresql://db/relay"),
    "RELAY_WRITE_FENCE_TIMEOUT": ("0.5", 0.5),
    "RELAY_RESUME_WINDOW": ("0", 0.0),
    "RELAY_RESUME_LOG": ("50", 50),
    "RELAY_RESUME_LOG_BYTES": ("4096", 4096),
    "RELAY_RESUME_BYTES_PER_ADDRESS": ("0", 0),
    "RELAY_FORWARDED_COUNT": ("2", 2),
    "RELAY_ADDRESS_IPV6_PREFIX": ("128", 128),
    "RELAY_MAX_CONNECTIONS_PER_ADDRESS": ("0", 0),
    "RELAY_LOGIN_ATTEMPTS_PER_ADDRESS": ("20", 20),
    "RELAY_LOGIN_WINDOW": ("600", 600.0),
    "RELAY_ZOOKEEPER": ("zk1:2181,zk2:2181", "zk1:2181,zk2:2181"),
    "RELAY_COORDINATOR_PATH": ("/run/relay/coord.db", "/run/relay/coord.db"),
    "RELAY_METRICS": ("no", False),
    "RELAY_INTERNAL_PORT": ("9000", 9000),
    "RELAY_INTERNAL_HOST": ("0.0.0.0", "0.0.0.0"),
    "RELAY_COORDINATOR_REQUIRED": ("false", False),
    "RELAY_ZOOKEEPER_DIGEST": ("relay:pa55:word", "relay:pa55:word"),
    "RELAY_ZOOKEEPER_TLS": ("true", True),
    "RELAY_ZOOKEEPER_TLS_CA": (__file__, __file__),
    "RELAY_ZOOKEEPER_TLS_CERT": (__file__, __file__),
    "RELAY_ZOOKEEPER_TLS_KEY": (__file__, __file__),
    "RELAY_ZOOKEEPER_TLS_VERIFY": ("false", False),
}
_ZK = {"RELAY_ZOOKEEPER": "zk1:2181"}
_TLS = {**_ZK, "RELAY_ZOOKEEPER_TLS": "true"}
_PAIR = {**_TLS, "RELAY_ZOOKEEPER_TLS_CERT": __file__, "RELAY_ZOOKEEPER_TLS_KEY": __file__}
#: What a variable needs beside it to be accepted (validate() refuses it alone).
NEEDS: dict[str, dict[str, str]] = {
    "RELAY_ZOOKEEPER_DIGEST": _ZK,
    "RELAY_ZOOKEEPER_TLS": _ZK,
    "RELAY_ZOOKEEPER_TLS_CA": _TLS,
    "RELAY_ZOOKEEPER_TLS_VERIFY": _TLS,
    "RELAY_ZOOKEEPER_TLS_CERT": _PAIR,
    "RELAY_ZOOKEEPER_TLS_KEY": _PAIR,
}


def env_of(name: str) -> str:
    return next(f.metadata["env"] for f in fields(Settings) if f.name == name)


def test_every_setting_has_its_own_relay_variable_and_a_case_here() -> None:
    names = [f.metadata["env"] for f in fields(Settings)]
    assert all(name.startswith("RELAY_") for name in names)
    assert len(set(names)) == len(names)
    assert sorted(names) == sorted(VALUES)


def test_an_empty_environment_gives_the_defaults() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.backend == "django_app.backend:DjangoBackend"
    assert settings.allowed_origins == ()
    assert settings.heartbeat_interval == 15.0 and settings.heartbeat_timeout == 15.0
    assert settings.worker_connections == 10_000 and settings.backend_concurrency == 8
    assert settings.resume_window == 300.0 and settings.resume_log == 500
    assert settings.permessage_deflate is True and settings.metrics is True
    assert settings.database_url == ""
    # The abuse limits: generous enough for hundreds of sessions behind one NAT.
    assert settings.forwarded_count == 0 and settings.address_ipv6_prefix == 64
    assert settings.max_connections_per_address == 1000
    assert settings.login_attempts_per_address == 120 and settings.login_window == 60.0
    assert settings.max_pending_bytes == 4 * 2**20
    assert settings.max_worker_pending_bytes == 64 * 2**20


@pytest.mark.parametrize("variable", sorted(VALUES))
def test_each_variable_is_parsed_into_its_setting(variable: str) -> None:
    raw, expected = VALUES[variable]
    settings = Settings.from_env({**NEEDS.get(variable, {}), variable: raw})
    name = next(f.name for f in fields(Settings) if f.metadata["env"] == variable)
    value = getattr(settings, name)
    assert value == expected and type(value) is type(expected)
    assert value != getattr(Settings(), name)  # the case really tests a change


def test_all_variables_together() -> None:
    settings = Settings.from_env({k: raw for k, (raw, _) in VALUES.items()})
    for f in fields(Settings):
        assert getattr(settings, f.name) == VALUES[f.metadata["env"]][1]


@pytest.mark.parametrize("raw", ["1", "true", "YES", " on "])
def test_true_booleans(raw: str) -> None:
    assert Settings.from_env({"RELAY_METRICS": raw}).metrics is True


@pytest.mark.parametrize("raw", ["0", "false", "No", "off", ""])
def test_false_booleans(raw: str) -> None:
    assert Settings.from_env({"RELAY_PERMESSAGE_DEFLATE": raw}).permessage_deflate is False


def test_database_url_falls_back_to_the_django_variable() -> None:
    assert Settings.from_env({"DATABASE_URL": "postgresql://d/x"}).database_url == (
        "postgresql://d/x"
    )
    both = {"DATABASE_URL": "postgresql://d/x", "RELAY_DATABASE_URL": "postgresql://r/y"}
    assert Settings.from_env(both).database_url == "postgresql://r/y"
    empty_relay = {"DATABASE_URL": "postgresql://d/x", "RELAY_DATABASE_URL": ""}
    assert Settings.from_env(empty_relay).database_url == "postgresql://d/x"


def test_unknown_variables_are_ignored() -> None:
    assert Settings.from_env({"RELAY_NOT_A_SETTING": "1", "PATH": "/bin"}) == Settings()


@pytest.mark.parametrize(
    ("variable", "raw", "message"),
    [
        ("RELAY_WORKER_CONNECTIONS", "many", "RELAY_WORKER_CONNECTIONS: not an integer: 'many'"),
        ("RELAY_RESUME_LOG", "2.5", "RELAY_RESUME_LOG: not an integer: '2.5'"),
        ("RELAY_MAX_MESSAGE_BYTES", "", "RELAY_MAX_MESSAGE_BYTES: not an integer: ''"),
        ("RELAY_HEARTBEAT_INTERVAL", "15s", "RELAY_HEARTBEAT_INTERVAL: not a number: '15s'"),
        ("RELAY_RESUME_WINDOW", "nan", "RELAY_RESUME_WINDOW: not a finite number: 'nan'"),
        ("RELAY_HANDSHAKE_TIMEOUT", "inf", "RELAY_HANDSHAKE_TIMEOUT: not a finite number: 'inf'"),
        ("RELAY_METRICS", "maybe", "RELAY_METRICS: not a boolean: 'maybe'"),
    ],
)
def test_values_that_do_not_parse_are_refused_naming_the_variable(
    variable: str, raw: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable: raw})
    assert str(caught.value) == message


POSITIVE = [
    "max_message_bytes",
    "send_buffer_bytes",
    "worker_connections",
    "max_subs_per_session",
    "max_pending_messages",
    "max_pending_bytes",
    "max_worker_pending_bytes",
    "login_window",
    "backend_concurrency",
    "handshake_timeout",
    "sockjs_heartbeat",
    "write_fence_timeout",
]


@pytest.mark.parametrize("name", POSITIVE)
@pytest.mark.parametrize("raw", ["0", "-1"])
def test_settings_that_must_be_positive(name: str, raw: str) -> None:
    variable = env_of(name)
    with pytest.raises(ConfigError, match=f"^{variable} must be positive"):
        Settings.from_env({variable: raw})


@pytest.mark.parametrize(
    "name",
    [
        "deflate_threshold",
        "resume_window",
        "resume_log",
        "heartbeat_interval",
        "heartbeat_timeout",
        "forwarded_count",
        "max_connections_per_address",
        "login_attempts_per_address",
        "resume_log_bytes",
        "resume_bytes_per_address",
        "inbound_bytes_per_address",
        "max_unblocked_methods",
    ],
)
def test_settings_that_may_be_zero_but_not_negative(name: str) -> None:
    variable = env_of(name)
    assert getattr(Settings.from_env({variable: "0"}), name) == 0
    with pytest.raises(ConfigError, match=f"^{variable} must not be negative.*got -1"):
        Settings.from_env({variable: "-1"})


def test_the_backend_must_be_a_dotted_path_with_an_attribute() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"RELAY_BACKEND": "shop.relay.Backend"})
    assert str(caught.value) == (
        "RELAY_BACKEND must look like 'module:attribute' (got 'shop.relay.Backend')"
    )


def test_config_error_is_a_value_error_and_chains_the_cause() -> None:
    with pytest.raises(ValueError) as caught:
        Settings.from_env({"RELAY_RESUME_LOG": "x"})
    assert isinstance(caught.value, ConfigError)
    assert isinstance(caught.value.__cause__, ValueError)


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(AttributeError):
        settings.worker_connections = 1  # type: ignore[misc]


@pytest.mark.parametrize("raw", ["0", "129", "-64"])
def test_the_ipv6_prefix_is_a_prefix_length(raw: str) -> None:
    with pytest.raises(ConfigError, match=r"^RELAY_ADDRESS_IPV6_PREFIX must be within 1\.\.128 "):
        Settings.from_env({"RELAY_ADDRESS_IPV6_PREFIX": raw})
    assert Settings.from_env({"RELAY_ADDRESS_IPV6_PREFIX": "1"}).address_ipv6_prefix == 1


def test_pending_byte_budgets_hold_at_least_one_message_and_nest() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"RELAY_MAX_PENDING_BYTES": "1048575"})
    assert str(caught.value) == (
        "RELAY_MAX_PENDING_BYTES must be at least RELAY_MAX_MESSAGE_BYTES (1048575 < 1048576)"
    )
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"RELAY_MAX_WORKER_PENDING_BYTES": "4194303"})
    assert str(caught.value) == (
        "RELAY_MAX_WORKER_PENDING_BYTES must be at least RELAY_MAX_PENDING_BYTES "
        "(4194303 < 4194304)"
    )
    equal = {"RELAY_MAX_PENDING_BYTES": "1048576", "RELAY_MAX_WORKER_PENDING_BYTES": "1048576"}
    settings = Settings.from_env(equal)
    assert settings.max_pending_bytes == settings.max_worker_pending_bytes == 1_048_576


def test_meteors_forwarded_count_variable_is_read_when_the_relays_is_unset() -> None:
    assert Settings.from_env({"HTTP_FORWARDED_COUNT": "1"}).forwarded_count == 1
    assert Settings.from_env({"HTTP_FORWARDED_COUNT": " "}).forwarded_count == 0
    both = {"HTTP_FORWARDED_COUNT": "1", "RELAY_FORWARDED_COUNT": "0"}
    assert Settings.from_env(both).forwarded_count == 0  # the relay's own variable wins


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("one", "HTTP_FORWARDED_COUNT: not an integer: 'one'"),
        ("-1", "HTTP_FORWARDED_COUNT must not be negative (got -1)"),
    ],
)
def test_a_bad_meteor_forwarded_count_is_refused_naming_it(raw: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"HTTP_FORWARDED_COUNT": raw})
    assert str(caught.value) == message
