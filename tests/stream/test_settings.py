"""load_settings: defaults, file and environment, and errors that name the key."""

from __future__ import annotations

from dataclasses import fields

import pytest

from stream.errors import ConfigError
from stream.scaling import MODEL_FEATURES
from stream.settings import Settings, load_settings

DEFAULTS = {
    "kafka_bootstrap": "127.0.0.1:9092",
    "group_id": "segmenter",
    "clicks_topic": "shop.clicks",
    "purchases_topic": "shop.purchases",
    "changes_topic": "segments.changes",
    "current_topic": "segments.current",
    "deadletter_topic": "segments.deadletter",
    "create_output_topics": True,
    "transactional": True,
    "instance_id": "",
    "kafka_sasl_password": "",
    "redis_url": "redis://127.0.0.1:6379/0",
    "redis_prefix": "seg:",
    "batch_max_events": 5000,
    "batch_min_events": 500,
    "batch_timeout_s": 0.02,
    "max_event_bytes": 65536,
    "max_future_skew_s": 3600.0,
    "min_event_year": 1970,
    "dedupe_window": 32,
    "n_clusters": 0,
    "k_min": 3,
    "k_max": 8,
    "kmeans_halflife": 0.01,
    "warmup_users": 200,
    "reservoir_size": 2000,
    "segment_match_threshold": 2.0,
    "seed": 42,
    "hysteresis_margin": 0.15,
    "model_sync_interval_s": 2.0,
    "model_sync_updates": 200,
    "model_publish_interval_s": 10.0,
    "model_publish_updates": 500,
    "model_refit_updates": 500_000,
    "model_refit_interval_days": 7.0,
    "k_criterion": "prediction_strength",
    "rfm_horizon": "365d",
    "watermark_lateness_s": 300.0,
    "watermark_idle_s": 10.0,
    "watermark_sync_interval_s": 1.0,
    "sweep_batch": 1000,
    "checkpoint_interval_s": 300.0,
    "model_versions_kept": 50,
    "catalogue_interval_s": 5.0,
    "metrics_host": "127.0.0.1",
    "metrics_port": 9400,
    "log_level": "INFO",
}


def key_of(env: dict[str, str], text: str | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(env, text)
    assert str(info.value).startswith(f"config {info.value.key}: ")
    return info.value.key


def test_defaults() -> None:
    s = load_settings({})
    described = s.describe()
    assert {k: described[k] for k in DEFAULTS} == DEFAULTS
    assert s == Settings()
    assert dict(s.extra) == {}
    assert {f.name for f in fields(Settings)} >= {*DEFAULTS, "extra"}
    assert set(described) == {f.name for f in fields(Settings)} - {"extra"}


def test_other_environment_variables_are_ignored() -> None:
    s = load_settings({"PATH": "/bin", "SEGMENTER": "x", "segmenter_n_clusters": "9"})
    assert s == Settings()


def test_config_file_variable_is_not_a_setting() -> None:
    assert load_settings({"SEGMENTER_CONFIG": "/etc/segmenter.toml"}) == Settings()


def test_environment_values_of_every_type() -> None:
    s = load_settings(
        {
            "SEGMENTER_GROUP_ID": "g2",
            "SEGMENTER_N_CLUSTERS": " 7 ",
            "SEGMENTER_KMEANS_HALFLIFE": "0.5",
            "SEGMENTER_CREATE_OUTPUT_TOPICS": "no",
            "SEGMENTER_BATCH_TIMEOUT_S": "2",
            "SEGMENTER_LOG_LEVEL": "debug",
        }
    )
    assert (s.group_id, s.n_clusters, s.kmeans_halflife) == ("g2", 7, 0.5)
    assert s.create_output_topics is False
    assert s.batch_timeout_s == 2.0 and isinstance(s.batch_timeout_s, float)
    assert s.log_level == "debug"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", True),
        ("true", True),
        ("YES", True),
        ("On", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
    ],
)
def test_booleans(text: str, value: bool) -> None:
    assert load_settings({"SEGMENTER_CREATE_OUTPUT_TOPICS": text}).create_output_topics is value


def test_file_values() -> None:
    text = """
group_id = "from-file"
n_clusters = 8
kmeans_halflife = 1
create_output_topics = false
redis_url = "rediss://cache:6380/2"
metrics_port = 0
"""
    s = load_settings({}, text)
    assert (s.group_id, s.n_clusters, s.kmeans_halflife) == ("from-file", 8, 1.0)
    assert s.create_output_topics is False
    assert s.redis_url == "rediss://cache:6380/2"
    assert s.metrics_port == 0


def test_environment_overrides_the_file() -> None:
    text = 'group_id = "from-file"\nn_clusters = 8\nseed = 1\n'
    s = load_settings({"SEGMENTER_N_CLUSTERS": "3", "SEGMENTER_GROUP_ID": "from-env"}, text)
    assert (s.group_id, s.n_clusters, s.seed) == ("from-env", 3, 1)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("SEGMENTER_N_CLUSTERS", "six"),
        ("SEGMENTER_N_CLUSTERS", "5.0"),
        ("SEGMENTER_N_CLUSTERS", ""),
        ("SEGMENTER_BATCH_TIMEOUT_S", "fast"),
        ("SEGMENTER_CREATE_OUTPUT_TOPICS", "maybe"),
        ("SEGMENTER_N_CLUSTERS", "1"),
        ("SEGMENTER_N_CLUSTERS", "65"),
        ("SEGMENTER_KMEANS_HALFLIFE", "0"),
        ("SEGMENTER_KMEANS_HALFLIFE", "1.5"),
        ("SEGMENTER_HYSTERESIS_MARGIN", "1"),
        ("SEGMENTER_HYSTERESIS_MARGIN", "-0.1"),
        ("SEGMENTER_METRICS_PORT", "65536"),
        ("SEGMENTER_METRICS_PORT", "-1"),
        ("SEGMENTER_REDIS_URL", "http://127.0.0.1:6379"),
        ("SEGMENTER_REDIS_URL", "127.0.0.1:6379"),
        ("SEGMENTER_LOG_LEVEL", "verbose"),
        ("SEGMENTER_BATCH_MAX_EVENTS", "0"),
        ("SEGMENTER_BATCH_MIN_EVENTS", "0"),
        ("SEGMENTER_BATCH_TIMEOUT_S", "-0.5"),
        ("SEGMENTER_MAX_EVENT_BYTES", "0"),
        ("SEGMENTER_DEDUPE_WINDOW", "0"),
        ("SEGMENTER_WARMUP_USERS", "-3"),
        ("SEGMENTER_CHECKPOINT_INTERVAL_S", "0"),
        ("SEGMENTER_MODEL_VERSIONS_KEPT", "0"),
        ("SEGMENTER_CATALOGUE_INTERVAL_S", "0.0"),
        ("SEGMENTER_PURCHASES_TOPIC", "shop.clicks"),
        ("SEGMENTER_MODEL_REFIT_UPDATES", "-1"),
        ("SEGMENTER_MODEL_REFIT_INTERVAL_DAYS", "-0.5"),
        ("SEGMENTER_K_CRITERION", "elbow"),
        ("SEGMENTER_RFM_HORIZON", "7d"),
        ("SEGMENTER_RFM_HORIZON", "forever"),
        ("SEGMENTER_WATERMARK_LATENESS_S", "-1"),
        ("SEGMENTER_WATERMARK_IDLE_S", "0"),
        ("SEGMENTER_WATERMARK_SYNC_INTERVAL_S", "0"),
        ("SEGMENTER_SWEEP_BATCH", "0"),
        ("SEGMENTER_ON_LOST_HISTORY", "ignore"),
        ("SEGMENTER_REDIS_WAIT_REPLICAS", "-1"),
        ("SEGMENTER_REDIS_WAIT_TIMEOUT_MS", "0"),
    ],
)
def test_bad_environment_values_name_the_variable(var: str, value: str) -> None:
    assert key_of({var: value}) == var


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('n_clusters = "six"', "n_clusters"),
        ("n_clusters = 5.5", "n_clusters"),
        ("n_clusters = true", "n_clusters"),
        ("n_clusters = 1", "n_clusters"),
        ("batch_timeout_s = false", "batch_timeout_s"),
        ('batch_timeout_s = "soon"', "batch_timeout_s"),
        ('create_output_topics = "sometimes"', "create_output_topics"),
        ("create_output_topics = 2", "create_output_topics"),
        ('group_id = ["a", "b"]', "group_id"),
        ("group_id = { a = 1 }", "group_id"),
        ("kmeans_halflife = 0", "kmeans_halflife"),
        ("hysteresis_margin = 1.0", "hysteresis_margin"),
        ("metrics_port = 70000", "metrics_port"),
        ('redis_url = "tcp://x"', "redis_url"),
        ('log_level = "trace"', "log_level"),
        ("dedupe_window = 0", "dedupe_window"),
        ('purchases_topic = "shop.clicks"', "purchases_topic"),
    ],
)
def test_bad_file_values_name_the_key(line: str, key: str) -> None:
    assert key_of({}, line + "\n") == key


def test_a_validation_error_names_the_file_key_when_the_env_did_not_set_it() -> None:
    assert key_of({"SEGMENTER_GROUP_ID": "g"}, "n_clusters = 100\n") == "n_clusters"


def test_a_validation_error_names_the_env_var_when_it_overrode_the_file() -> None:
    assert key_of({"SEGMENTER_N_CLUSTERS": "100"}, "n_clusters = 4\n") == "SEGMENTER_N_CLUSTERS"


def test_message_says_what_was_wrong() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^config SEGMENTER_N_CLUSTERS: must be 0 \(choose k\) or between 2 and 64",
    ):
        load_settings({"SEGMENTER_N_CLUSTERS": "99"})
    with pytest.raises(ConfigError, match="expected an integer, got 'six'"):
        load_settings({"SEGMENTER_N_CLUSTERS": "six"})


def test_invalid_toml() -> None:
    with pytest.raises(ConfigError, match="is not valid TOML") as info:
        load_settings({}, "n_clusters = = 3")
    assert info.value.key == "<settings file>"


def test_unknown_environment_variable() -> None:
    assert key_of({"SEGMENTER_N_CLUSTER": "5"}) == "SEGMENTER_N_CLUSTER"
    assert key_of({"SEGMENTER_EXTRA": "x"}) == "SEGMENTER_EXTRA"
    with pytest.raises(ConfigError, match="is not a known setting"):
        load_settings({"SEGMENTER_FOO": "1"})


def test_unknown_file_key() -> None:
    assert key_of({}, "n_cluster = 5\n") == "n_cluster"
    assert key_of({}, 'extra = "x"\n') == "extra"
    assert key_of({}, 'kafka = "not a table"\n') == "kafka"
    assert key_of({}, "[redis]\nurl = 'redis://x'\n") == "redis"


def test_kafka_properties_pass_through() -> None:
    text = """
[kafka]
"security.protocol" = "SSL"
"sasl.mechanism" = "PLAIN"
"socket.timeout.ms" = 1000
"""
    env = {
        "SEGMENTER_KAFKA__SECURITY__PROTOCOL": "SASL_SSL",
        "SEGMENTER_KAFKA__SASL__USERNAME": "svc",
    }
    s = load_settings(env, text)
    assert dict(s.extra) == {
        "security.protocol": "SASL_SSL",  # the environment wins
        "sasl.mechanism": "PLAIN",
        "socket.timeout.ms": "1000",
        "sasl.username": "svc",
    }
    conf = s.kafka_client_config()
    assert conf["bootstrap.servers"] == "127.0.0.1:9092"
    assert conf["security.protocol"] == "SASL_SSL"
    assert "sasl.password" not in conf


def test_kafka_bootstrap_is_a_setting_not_a_property() -> None:
    s = load_settings({"SEGMENTER_KAFKA_BOOTSTRAP": "k1:9092,k2:9092"})
    assert s.kafka_bootstrap == "k1:9092,k2:9092"
    assert dict(s.extra) == {}


def test_sasl_password_goes_to_the_client_config() -> None:
    s = load_settings({"SEGMENTER_KAFKA_SASL_PASSWORD": "s3cret"})
    assert s.kafka_client_config()["sasl.password"] == "s3cret"


def test_kafka_table_with_dotted_keys() -> None:
    s = load_settings({}, '[kafka]\nsecurity.protocol = "SASL_SSL"\n')
    assert dict(s.extra) == {"security.protocol": "SASL_SSL"}


def test_describe_masks_secrets() -> None:
    s = load_settings(
        {
            "SEGMENTER_KAFKA_SASL_PASSWORD": "s3cret",
            "SEGMENTER_REDIS_URL": "redis://app:hunter2@cache:6379/0",
        }
    )
    d = s.describe()
    assert d["kafka_sasl_password"] == "***"
    assert d["redis_url"] == "redis://app:***@cache:6379/0"
    assert "s3cret" not in repr(d) and "hunter2" not in repr(d)
    assert "extra" not in d


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@cache:6379/0", "redis://:***@cache:6379/0"),
        ("rediss://u:p@ss@cache:6380", "rediss://u:***@cache:6380"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
        ("redis://user@cache:6379", "redis://user@cache:6379"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
    ],
)
def test_describe_masks_the_redis_url_password(url: str, shown: str) -> None:
    assert load_settings({"SEGMENTER_REDIS_URL": url}).describe()["redis_url"] == shown


@pytest.mark.parametrize(
    "url", ["unix:///run/redis.sock?db=0&password=hunter2", "redis://cache:6379/0?password=hunter2"]
)
def test_describe_masks_a_password_in_the_query(url: str) -> None:
    assert "hunter2" not in load_settings({"SEGMENTER_REDIS_URL": url}).describe()["redis_url"]


def test_empty_sasl_password_is_shown_empty() -> None:
    assert load_settings({}).describe()["kafka_sasl_password"] == ""


def test_replace_validates() -> None:
    s = Settings()
    assert s.replace(n_clusters=9).n_clusters == 9
    with pytest.raises(ConfigError) as info:
        s.replace(n_clusters=1)
    assert info.value.key == "n_clusters"


def test_k_is_fixed_by_n_clusters_or_chosen_from_a_range() -> None:
    assert Settings().k_bounds == (3, 8)
    assert Settings(n_clusters=5).k_bounds == (5, 5)
    p = Settings(k_min=2, k_max=4, reservoir_size=300).model_params()
    assert (p.k_min, p.k_max, p.reservoir_size, p.warmup_users) == (2, 4, 300, 200)
    for kw, key in (
        ({"k_min": 1}, "k_min"),
        ({"k_min": 5, "k_max": 4}, "k_max"),
        ({"warmup_users": 10}, "warmup_users"),
        ({"reservoir_size": 100}, "reservoir_size"),
        ({"segment_match_threshold": 0.0}, "segment_match_threshold"),
        ({"model_sync_interval_s": 0.0}, "model_sync_interval_s"),
    ):
        with pytest.raises(ConfigError) as info:
            Settings(**kw)  # type: ignore[arg-type]
        assert info.value.key == key, kw


@pytest.mark.parametrize(
    "var",
    [
        "SEGMENTER_BATCH_TIMEOUT_S",
        "SEGMENTER_CHECKPOINT_INTERVAL_S",
        "SEGMENTER_CATALOGUE_INTERVAL_S",
        "SEGMENTER_MAX_FUTURE_SKEW_S",
        "SEGMENTER_MODEL_REFIT_INTERVAL_DAYS",
        "SEGMENTER_WATERMARK_LATENESS_S",
        "SEGMENTER_WATERMARK_IDLE_S",
    ],
)
def test_nan_is_rejected(var: str) -> None:
    assert key_of({var: "nan"}) == var


def test_negative_future_skew_is_rejected() -> None:
    assert key_of({"SEGMENTER_MAX_FUTURE_SKEW_S": "-60"}) == "SEGMENTER_MAX_FUTURE_SKEW_S"


def test_event_time_settings_reach_the_model_params() -> None:
    s = load_settings(
        {
            "SEGMENTER_MODEL_REFIT_INTERVAL_DAYS": "1.5",
            "SEGMENTER_MODEL_REFIT_UPDATES": "0",
            "SEGMENTER_RFM_HORIZON": "lifetime",
        }
    )
    p = s.model_params()
    assert p.refit_interval_ms == 36 * 3_600_000
    assert p.refit_updates == 0
    assert p.k_criterion == "prediction_strength"
    assert s.rfm_horizon == "lifetime"
    assert Settings().model_params().refit_interval_ms == 7 * 86_400_000


@pytest.mark.parametrize("criterion", ["silhouette", "prediction_strength"])
def test_every_k_criterion_reaches_the_model(criterion: str) -> None:
    s = load_settings({"SEGMENTER_K_CRITERION": criterion})
    assert s.model_params().k_criterion == criterion


@pytest.mark.parametrize("horizon", ["30d", "90d", "365d", "lifetime"])
def test_every_rfm_horizon_is_accepted(horizon: str) -> None:
    assert load_settings({"SEGMENTER_RFM_HORIZON": horizon}).rfm_horizon == horizon


def test_refits_may_be_turned_off() -> None:
    s = load_settings(
        {"SEGMENTER_MODEL_REFIT_UPDATES": "0", "SEGMENTER_MODEL_REFIT_INTERVAL_DAYS": "0"}
    )
    p = s.model_params()
    assert (p.refit_updates, p.refit_interval_ms) == (0, 0)


def test_model_features_default_to_all_and_may_be_narrowed_in_any_order() -> None:
    assert Settings().model_params().features == MODEL_FEATURES
    s = load_settings({"SEGMENTER_MODEL_FEATURES": " monetary,days_without_purchase , frequency"})
    assert s.model_params().features == ("frequency", "monetary", "days_without_purchase")


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("frequency,monetary", "must include days_without_purchase"),
        ("frequency,monetary,days_without_purchase,spend_30d", "spend_30d cannot be"),
    ],
)
def test_a_bad_model_feature_list_names_the_key(value: str, says: str) -> None:
    with pytest.raises(ConfigError, match=f"SEGMENTER_MODEL_FEATURES: .*{says}"):
        load_settings({"SEGMENTER_MODEL_FEATURES": value})


def test_waiting_for_replicas_is_for_a_single_server() -> None:
    with pytest.raises(ConfigError, match="config redis_wait_replicas: is for a single"):
        Settings(redis_wait_replicas=1, redis_cluster=True)
    assert Settings(redis_wait_replicas=2).redis_wait_replicas == 2
