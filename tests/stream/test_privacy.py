"""Pseudonyms, privacy and security settings: secrets from files, validation, masking.

Pure: no server, no real environment; secret files are real files in a temporary folder.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from stream.errors import ConfigError
from stream.privacy import (
    MIN_SECRET_BYTES,
    PSEUDONYM_HEX_CHARS,
    pseudonymise,
    user_id_mapper,
)
from stream.settings import Settings, is_secret, load_settings

SECRET = "a-secret-of-32-bytes-for-tests!!"


def key_of(env: dict[str, str], text: str | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(env, text)
    return info.value.key


# -- the pseudonym -----------------------------------------------------------------------


def test_pseudonym_is_the_truncated_hmac_sha256_of_the_id() -> None:
    # RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
    want = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    assert pseudonymise(b"Jefe", "what do ya want for nothing?") == want[:PSEUDONYM_HEX_CHARS]


@pytest.mark.parametrize("user_id", ["u1", "", "ü-ñ-中", "x" * 256, "user-0001"])
def test_pseudonym_has_a_fixed_length_and_hex_alphabet(user_id: str) -> None:
    p = pseudonymise(SECRET.encode(), user_id)
    assert len(p) == PSEUDONYM_HEX_CHARS
    assert set(p) <= set("0123456789abcdef")
    assert user_id not in p or user_id == ""
    full = hmac.new(SECRET.encode(), user_id.encode(), hashlib.sha256).hexdigest()
    assert p == full[:PSEUDONYM_HEX_CHARS]


def test_pseudonym_depends_on_the_id_and_on_the_secret() -> None:
    ids = [f"user-{i:04d}" for i in range(2000)]
    assert len({pseudonymise(SECRET.encode(), u) for u in ids}) == len(ids)
    other = "another-secret-of-32-bytes-long!"
    assert all(pseudonymise(SECRET.encode(), u) != pseudonymise(other.encode(), u) for u in ids)


def test_mapper_is_identity_free_when_off_and_the_pseudonym_when_on() -> None:
    assert user_id_mapper(None) is None
    assert Settings().user_id_key is None
    s = Settings(pseudonymise_user_ids=True, user_id_secret=SECRET)
    mapper = user_id_mapper(s.user_id_key)
    assert mapper is not None and mapper("u1") == pseudonymise(SECRET.encode(), "u1")
    # A secret alone does not switch pseudonymisation on.
    assert Settings(user_id_secret=SECRET).user_id_key is None


# -- settings validation -------------------------------------------------------------------


def test_pseudonymisation_without_a_secret_names_the_secret() -> None:
    assert key_of({"SEGMENTER_PSEUDONYMISE_USER_IDS": "true"}) == "user_id_secret"
    with pytest.raises(ConfigError, match="SEGMENTER_USER_ID_SECRET_FILE"):
        load_settings({}, "pseudonymise_user_ids = true\n")


def test_a_short_secret_is_refused_without_being_printed() -> None:
    short = "x" * (MIN_SECRET_BYTES - 1)
    env = {"SEGMENTER_PSEUDONYMISE_USER_IDS": "1", "SEGMENTER_USER_ID_SECRET": short}
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert info.value.key == "SEGMENTER_USER_ID_SECRET"
    assert f"at least {MIN_SECRET_BYTES} bytes" in str(info.value)
    assert short not in str(info.value)
    # Bytes, not characters: eight two-byte characters are long enough.
    ok = load_settings({**env, "SEGMENTER_USER_ID_SECRET": "é" * 8})
    assert ok.user_id_key == "é" * 8


def test_a_short_secret_from_a_file_names_the_file_variable(tmp_path: Path) -> None:
    f = tmp_path / "secret"
    f.write_text("too short\n")
    env = {"SEGMENTER_PSEUDONYMISE_USER_IDS": "1", "SEGMENTER_USER_ID_SECRET_FILE": str(f)}
    assert key_of(env) == "SEGMENTER_USER_ID_SECRET_FILE"


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"redis_url": "redis://app:pw@cache:6379/0", "redis_password": "pw2"}, "redis_password"),
        ({"redis_url": "unix:///s.sock?password=pw", "redis_password": "pw2"}, "redis_password"),
        ({"redis_url": "redis://app@cache:6379/0", "redis_username": "bob"}, "redis_username"),
        (
            {"redis_url": "redis://cache:6379/0", "redis_tls_ca_file": "/ca.pem"},
            "redis_tls_ca_file",
        ),
    ],
)
def test_redis_security_settings_are_checked(changes: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings(**changes)  # type: ignore[arg-type]
    assert info.value.key == key
    assert "pw2" not in str(info.value)


def test_redis_credentials_and_tls_settings() -> None:
    s = load_settings(
        {
            "SEGMENTER_REDIS_URL": "rediss://cache:6380/0",
            "SEGMENTER_REDIS_USERNAME": "segmenter",
            "SEGMENTER_REDIS_PASSWORD": "hunter2",
            "SEGMENTER_REDIS_TLS_CA_FILE": "/etc/ssl/redis-ca.pem",
        }
    )
    assert (s.redis_username, s.redis_password, s.redis_tls_ca_file) == (
        "segmenter",
        "hunter2",
        "/etc/ssl/redis-ca.pem",
    )


# -- secrets from files ---------------------------------------------------------------------


def test_every_secret_setting_can_come_from_a_file(tmp_path: Path) -> None:
    secrets = ["kafka_sasl_password", "redis_password", "user_id_secret"]
    assert sorted(n for n in Settings().describe() if is_secret(n)) == sorted(secrets)
    env = {}
    for name in secrets:
        f = tmp_path / name
        f.write_text(f"{name}-value-of-some-length\n")  # the line break is not part of it
        env[f"SEGMENTER_{name.upper()}_FILE"] = str(f)
    s = load_settings(env)
    for name in secrets:
        assert getattr(s, name) == f"{name}-value-of-some-length"


def test_a_secret_file_in_the_settings_file(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_text("from-a-file\r\n")
    s = load_settings({}, f'redis_password_file = "{f}"\n')
    assert s.redis_password == "from-a-file"
    # The environment wins over the file, as for every setting.
    s = load_settings({"SEGMENTER_REDIS_PASSWORD": "from-env"}, f'redis_password_file = "{f}"\n')
    assert s.redis_password == "from-env"


def test_a_secret_and_its_file_together_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_text("x")
    env = {"SEGMENTER_REDIS_PASSWORD": "a", "SEGMENTER_REDIS_PASSWORD_FILE": str(f)}
    assert key_of(env) == "SEGMENTER_REDIS_PASSWORD_FILE"
    assert key_of({}, f'redis_password = "a"\nredis_password_file = "{f}"\n') == (
        "redis_password_file"
    )


def test_an_unreadable_secret_file_names_the_variable_and_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError) as info:
        load_settings({"SEGMENTER_KAFKA_SASL_PASSWORD_FILE": str(missing)})
    assert info.value.key == "SEGMENTER_KAFKA_SASL_PASSWORD_FILE"
    assert str(missing) in str(info.value)
    assert key_of({}, "user_id_secret_file = 3\n") == "user_id_secret_file"


def test_only_secret_settings_have_a_file_variable() -> None:
    assert key_of({"SEGMENTER_GROUP_ID_FILE": "/x"}) == "SEGMENTER_GROUP_ID_FILE"


def test_read_file_is_replaceable() -> None:
    files = {"/run/secrets/id": SECRET}
    s = load_settings(
        {
            "SEGMENTER_PSEUDONYMISE_USER_IDS": "on",
            "SEGMENTER_USER_ID_SECRET_FILE": "/run/secrets/id",
        },
        read_file=files.__getitem__,
    )
    assert s.user_id_key == SECRET


# -- masking --------------------------------------------------------------------------------


def test_secrets_are_masked_in_describe_and_repr() -> None:
    s = Settings(
        kafka_sasl_password="kafka-pw-123",
        redis_url="rediss://cache:6380/0",
        redis_username="app2",
        redis_password="redis-pw-123",
        redis_tls_ca_file="/ca.pem",
        user_id_secret=SECRET,
        pseudonymise_user_ids=True,
    )
    d = s.describe()
    assert d["kafka_sasl_password"] == d["redis_password"] == d["user_id_secret"] == "***"
    assert d["redis_username"] == "app2" and d["redis_tls_ca_file"] == "/ca.pem"
    for text in (repr(d), repr(s), str(s)):
        for secret in ("kafka-pw-123", "redis-pw-123", SECRET):
            assert secret not in text
    url = Settings(redis_url="rediss://app:url-pw-123@cache:6380/0")
    assert "url-pw-123" not in repr(url)


def test_metrics_bind_to_loopback_by_default() -> None:
    assert Settings().metrics_host == "127.0.0.1"
    assert load_settings({"SEGMENTER_METRICS_HOST": "0.0.0.0"}).metrics_host == "0.0.0.0"
