"""The one settings object, built once at start-up and passed down.

Values come from defaults, then an optional TOML file, then ``SEGMENTER_*`` environment
variables (highest precedence). Parsing is a pure function of the mapping and the file's
text, so it is tested without touching the real environment; only the CLI reads
``os.environ``. The one exception is a secret given as a file (``SEGMENTER_<NAME>_FILE``,
or ``<name>_file`` in the TOML file): it is read through a function the caller may
replace.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from stream.checkpoint import ModelParams
from stream.errors import ConfigError
from stream.feature_registry import MODEL_FEATURES, RFM_HORIZONS
from stream.privacy import MIN_SECRET_BYTES
from stream.scaling import check_model_features
from stream.selection import K_CRITERIA

ENV_PREFIX = "SEGMENTER_"
#: The environment variable naming the optional TOML settings file.
CONFIG_FILE_VAR = "SEGMENTER_CONFIG"

# Settings that hold secrets are never printed: ``Settings.describe()`` masks them, and
# each can also be read from a file (``SEGMENTER_<NAME>_FILE``).
_SECRET_MARKERS = ("password", "secret", "sasl")
#: Suffix of the variable (or TOML key) naming a file that holds a secret setting.
SECRET_FILE_SUFFIX = "_file"


def is_secret(name: str) -> bool:
    """Whether setting ``name`` holds a secret (masked, and readable from a file)."""
    return any(m in name for m in _SECRET_MARKERS)


@dataclass(frozen=True)
class Settings:
    """Every tunable of the segmenter.

    Each field maps to an environment variable ``SEGMENTER_<FIELD NAME IN CAPITALS>`` and
    to the same key, in lower case, in the TOML file.
    """

    # Kafka
    kafka_bootstrap: str = "127.0.0.1:9092"
    group_id: str = "segmenter"
    clicks_topic: str = "shop.clicks"
    purchases_topic: str = "shop.purchases"
    changes_topic: str = "segments.changes"
    current_topic: str = "segments.current"
    deadletter_topic: str = "segments.deadletter"
    # Holds no records: the group's committed offsets on it count each partition's
    # batches without input (warm-up assignments, moves, the sweep), committed with them.
    marks_topic: str = "segments.marks"
    create_output_topics: bool = True
    transactional: bool = True
    instance_id: str = ""
    kafka_sasl_password: str = ""
    # Redis
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "seg:"
    redis_cluster: bool = False
    # Replicas that must acknowledge a batch's Redis writes before its offsets are
    # committed (Redis WAIT); 0: none asked for. A batch waits at most the timeout, then
    # is retried, so nothing is committed while too few replicas answer.
    redis_wait_replicas: int = 0
    redis_wait_timeout_ms: int = 1000
    redis_username: str = ""
    redis_password: str = ""
    redis_tls_ca_file: str = ""
    # Privacy
    pseudonymise_user_ids: bool = False
    user_id_secret: str = ""
    # Batching
    batch_max_events: int = 5000
    # A batch starts at once when this many events are ready; with fewer, it waits up to
    # batch_timeout_s for more. Waiting amortises a batch's fixed cost (its Redis round
    # trips and Kafka transaction) over more events when traffic is light; when events
    # queue up faster than that, waiting would only add latency.
    batch_min_events: int = 500
    batch_timeout_s: float = 0.02
    # Input validation
    max_event_bytes: int = 65536
    max_future_skew_s: float = 3600.0
    min_event_year: int = 1970
    dedupe_window: int = 32
    # Model
    n_clusters: int = 0
    k_min: int = 3
    k_max: int = 8
    kmeans_halflife: float = 0.01
    # User updates learned from per batch at most (a uniform sample beyond); 0: all.
    learn_budget: int = 1000
    warmup_users: int = 200
    reservoir_size: int = 2000
    segment_match_threshold: float = 2.0
    seed: int = 42
    hysteresis_margin: float = 0.15
    model_sync_interval_s: float = 2.0
    model_sync_updates: int = 200
    model_publish_interval_s: float = 10.0
    model_publish_updates: int = 500
    # Live traffic of one event per user a batch merges as many user updates as events: at
    # 20,000 events/s, 50,000 updates came every 2.5 s, and a refit (k chosen again, and
    # every user re-decided when the segments change) every 5 s kept one process behind.
    model_refit_updates: int = 500_000
    model_refit_interval_days: float = 7.0
    # A backlog moves through a refit interval of event time in moments, and a refit
    # costs about a second: no process tries one sooner than this after its last.
    model_refit_min_interval_s: float = 5.0
    k_criterion: str = "prediction_strength"
    # Comma-separated model features to cluster on; empty: all of them.
    model_features: str = ""
    # Event time
    rfm_horizon: str = "365d"
    watermark_lateness_s: float = 300.0
    watermark_idle_s: float = 10.0
    watermark_sync_interval_s: float = 1.0
    sweep_batch: int = 1000
    # Largest centre move (standardised units) before every user is re-decided; 0: never
    # (the default: on a backlog, centres learning fast made it re-decide everyone often).
    resweep_drift: float = 0.0
    checkpoint_interval_s: float = 300.0
    # Kept versions (``segmenter model versions``, rollback), oldest dropped first.
    model_versions_kept: int = 50
    # When Redis lost writes that Kafka no longer retains: "stop" (exit, naming the
    # partitions and offsets) or "continue" (rebuild what Kafka has, and say what is not).
    on_lost_history: str = "stop"
    catalogue_interval_s: float = 5.0
    # Metrics and health: loopback unless asked for, as a process may run where its port
    # is reachable from outside (docker-compose.yml asks for 0.0.0.0).
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9400
    log_level: str = "INFO"

    extra: Mapping[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        _check_positive(
            self, "batch_max_events", "batch_min_events", "batch_timeout_s", "max_event_bytes"
        )
        _check_positive(self, "dedupe_window", "warmup_users", "checkpoint_interval_s")
        _check_positive(
            self, "catalogue_interval_s", "model_sync_interval_s", "model_publish_interval_s"
        )
        _check_positive(self, "model_sync_updates", "model_publish_updates", "model_versions_kept")
        if not self.max_future_skew_s >= 0:
            raise ConfigError(
                "max_future_skew_s", f"must be 0 or more, got {self.max_future_skew_s}"
            )
        if not 1970 <= self.min_event_year <= 9999:
            raise ConfigError(
                "min_event_year", f"must be a year from 1970, got {self.min_event_year}"
            )
        if not (self.n_clusters == 0 or 2 <= self.n_clusters <= 64):
            raise ConfigError(
                "n_clusters", f"must be 0 (choose k) or between 2 and 64, got {self.n_clusters}"
            )
        if not 2 <= self.k_min <= self.k_max <= 64:
            raise ConfigError(
                "k_min" if not 2 <= self.k_min <= 64 else "k_max",
                f"need 2 <= k_min <= k_max <= 64, got k_min={self.k_min}, k_max={self.k_max}",
            )
        if self.warmup_users < 2 * self.k_bounds[1]:
            raise ConfigError(
                "warmup_users",
                f"must be at least twice the largest k ({self.k_bounds[1]}), "
                f"got {self.warmup_users}",
            )
        if self.reservoir_size < self.warmup_users:
            raise ConfigError(
                "reservoir_size",
                f"must be at least warmup_users ({self.warmup_users}), got {self.reservoir_size}",
            )
        if self.model_refit_updates < 0:
            raise ConfigError(
                "model_refit_updates", f"must be 0 (never) or more, got {self.model_refit_updates}"
            )
        if not self.model_refit_interval_days >= 0:
            raise ConfigError(
                "model_refit_interval_days",
                f"must be 0 (never) or more, got {self.model_refit_interval_days}",
            )
        if self.k_criterion not in K_CRITERIA:
            raise ConfigError(
                "k_criterion", f"must be one of {', '.join(K_CRITERIA)}, got {self.k_criterion!r}"
            )
        try:
            _ = self.model_feature_names
        except ValueError as exc:
            raise ConfigError("model_features", str(exc)) from None
        if self.redis_wait_replicas < 0:
            raise ConfigError(
                "redis_wait_replicas", f"must be 0 or more, got {self.redis_wait_replicas}"
            )
        if self.redis_wait_timeout_ms < 1:
            raise ConfigError(
                "redis_wait_timeout_ms", f"must be 1 or more, got {self.redis_wait_timeout_ms}"
            )
        if self.redis_wait_replicas and self.redis_cluster:
            raise ConfigError(
                "redis_wait_replicas",
                "is for a single server with replicas; a Redis Cluster's writes go to many "
                "primaries",
            )
        if self.on_lost_history not in ("stop", "continue"):
            raise ConfigError(
                "on_lost_history", f"must be stop or continue, got {self.on_lost_history!r}"
            )
        if self.rfm_horizon not in RFM_HORIZONS:
            raise ConfigError(
                "rfm_horizon", f"must be one of {', '.join(RFM_HORIZONS)}, got {self.rfm_horizon!r}"
            )
        if not self.watermark_lateness_s >= 0:
            raise ConfigError(
                "watermark_lateness_s", f"must be 0 or more, got {self.watermark_lateness_s}"
            )
        _check_positive(self, "watermark_idle_s", "watermark_sync_interval_s", "sweep_batch")
        if not self.resweep_drift >= 0:
            raise ConfigError("resweep_drift", f"must be 0 or more, got {self.resweep_drift}")
        if not self.learn_budget >= 0:
            raise ConfigError("learn_budget", f"must be 0 or more, got {self.learn_budget}")
        if not self.model_refit_min_interval_s >= 0:
            raise ConfigError(
                "model_refit_min_interval_s",
                f"must be 0 or more, got {self.model_refit_min_interval_s}",
            )
        if not self.segment_match_threshold > 0:
            raise ConfigError(
                "segment_match_threshold", f"must be positive, got {self.segment_match_threshold}"
            )
        if not 0.0 < self.kmeans_halflife <= 1.0:
            raise ConfigError("kmeans_halflife", f"must be in (0, 1], got {self.kmeans_halflife}")
        if not 0.0 <= self.hysteresis_margin < 1.0:
            raise ConfigError(
                "hysteresis_margin", f"must be in [0, 1), got {self.hysteresis_margin}"
            )
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError("metrics_port", f"must be a TCP port, got {self.metrics_port}")
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(
                "redis_url",
                "must start with redis://, rediss:// or unix:// (see docs/configuration.md)",
            )
        _check_redis_security(self)
        _check_pseudonymisation(self)
        if self.clicks_topic == self.purchases_topic:
            raise ConfigError("purchases_topic", "must differ from clicks_topic")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError("log_level", "must be one of DEBUG, INFO, WARNING, ERROR")

    def __repr__(self) -> str:
        # The dataclass repr would show secrets wherever a Settings is printed or logged.
        shown = ", ".join(f"{k}={v!r}" for k, v in self.describe().items())
        return f"Settings({shown})"

    @property
    def user_id_key(self) -> str | None:
        """The HMAC secret that user ids are pseudonymised with, or ``None`` when off."""
        return self.user_id_secret if self.pseudonymise_user_ids else None

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    @property
    def k_bounds(self) -> tuple[int, int]:
        """The range k is chosen from: ``n_clusters`` when it fixes k, else k_min..k_max."""
        if self.n_clusters:
            return self.n_clusters, self.n_clusters
        return self.k_min, self.k_max

    @property
    def model_feature_names(self) -> tuple[str, ...]:
        """The model features clustered on: ``model_features`` in the registry's order, or
        every model feature when it is empty.

        Raises
        ------
        ValueError
            If a name is not a model feature, or recency, frequency or monetary is missing.
        """
        if not self.model_features.strip():
            return MODEL_FEATURES
        asked = {n.strip() for n in self.model_features.split(",") if n.strip()}
        unknown = sorted(asked - set(MODEL_FEATURES))
        # Any order, any spacing: the registry's order is the vector's.
        ordered = tuple(n for n in MODEL_FEATURES if n in asked) + tuple(unknown)
        return check_model_features(ordered)

    def model_params(self) -> ModelParams:
        """The model's hyperparameters from these settings."""
        k_min, k_max = self.k_bounds
        return ModelParams(
            k_min=k_min,
            k_max=k_max,
            warmup_users=self.warmup_users,
            halflife=self.kmeans_halflife,
            match_threshold=self.segment_match_threshold,
            reservoir_size=self.reservoir_size,
            publish_interval_ms=int(self.model_publish_interval_s * 1000),
            publish_updates=self.model_publish_updates,
            refit_updates=self.model_refit_updates,
            refit_interval_ms=int(self.model_refit_interval_days * 86_400_000),
            k_criterion=self.k_criterion,
            seed=self.seed,
            features=self.model_feature_names,
        )

    def kafka_client_config(self) -> dict[str, str | int | float | bool]:
        """librdkafka properties shared by every Kafka client: bootstrap, pass-through
        ``[kafka]`` / ``SEGMENTER_KAFKA__*`` properties, and the SASL password."""
        conf: dict[str, str | int | float | bool] = {
            "bootstrap.servers": self.kafka_bootstrap,
            **self.extra,
        }
        if self.kafka_sasl_password:
            conf["sasl.password"] = self.kafka_sasl_password
        return conf

    def describe(self) -> dict[str, Any]:
        """The settings as a dict fit for printing, with secrets masked."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if is_secret(f.name) and value:
                value = "***"
            elif f.name == "redis_url":
                value = _mask_url_password(value)
            out[f.name] = value
        return out


def _check_positive(settings: Settings, *names: str) -> None:
    for name in names:
        value = getattr(settings, name)
        if not value > 0:  # written so that NaN fails too
            raise ConfigError(name, f"must be greater than 0, got {value}")


def _check_redis_security(s: Settings) -> None:
    """Redis credentials and TLS: each in one place, TLS options only for TLS URLs."""
    url = urlsplit(s.redis_url)
    query = parse_qs(url.query)
    if s.redis_password and (url.password or "password" in query):
        raise ConfigError(
            "redis_password", "the Redis URL holds a password too: set it in one place only"
        )
    if s.redis_username and (url.username or "username" in query):
        raise ConfigError(
            "redis_username", "the Redis URL holds a user name too: set it in one place only"
        )
    if s.redis_tls_ca_file and url.scheme != "rediss":
        raise ConfigError(
            "redis_tls_ca_file", "needs a TLS Redis URL (rediss://), got another scheme"
        )


def _check_pseudonymisation(s: Settings) -> None:
    # The message gives lengths, never the secret.
    if s.pseudonymise_user_ids and not s.user_id_secret:
        raise ConfigError(
            "user_id_secret",
            "must be set when pseudonymise_user_ids is on (SEGMENTER_USER_ID_SECRET, or "
            "SEGMENTER_USER_ID_SECRET_FILE naming a file that holds it)",
        )
    n = len(s.user_id_secret.encode())
    if s.user_id_secret and n < MIN_SECRET_BYTES:
        raise ConfigError(
            "user_id_secret", f"must be at least {MIN_SECRET_BYTES} bytes long, got {n}"
        )


def _mask_url_password(url: str) -> str:
    """Mask the password of a Redis URL, in the user-info part and in ``?password=``."""
    base, qmark, query = url.partition("?")
    if qmark:
        params = [
            "password=***" if p.split("=", 1)[0].lower() == "password" else p
            for p in query.split("&")
        ]
        query = "&".join(params)
    scheme, sep, rest = base.partition("://")
    creds, at, host = rest.rpartition("@")
    if at and ":" in creds:
        base = f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}"
    return base + qmark + query


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in table.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, name + "."))
        elif isinstance(v, bool):
            out[name] = "true" if v else "false"
        else:
            out[name] = str(v)
    return out


def _coerce(key: str, raw: Any, kind: type) -> Any:
    """Turn a raw env or file value into ``kind``, naming ``key`` when it cannot."""
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(key, f"expected true or false, got {raw!r}")
    if kind is int:
        if isinstance(raw, bool):
            raise ConfigError(key, f"expected an integer, got {raw!r}")
        try:
            return int(str(raw).strip())
        except ValueError:
            raise ConfigError(key, f"expected an integer, got {raw!r}") from None
    if kind is float:
        if isinstance(raw, bool):
            raise ConfigError(key, f"expected a number, got {raw!r}")
        try:
            return float(str(raw).strip())
        except ValueError:
            raise ConfigError(key, f"expected a number, got {raw!r}") from None
    if not isinstance(raw, str | int | float):
        raise ConfigError(key, f"expected a string, got {raw!r}")
    return str(raw)


_FIELD_TYPES: dict[str, type] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
}


def read_secret_file(path: str) -> str:
    """The secret held in file ``path``, without the line break editors and ``echo`` end
    files with (Docker and Kubernetes secrets are files like this)."""
    return Path(path).read_text(encoding="utf-8").rstrip("\r\n")


def load_settings(
    env: Mapping[str, str],
    file_text: str | None = None,
    read_file: Callable[[str], str] = read_secret_file,
) -> Settings:
    """Build :class:`Settings` from environment variables and an optional TOML text.

    Parameters
    ----------
    env
        The process environment (only ``SEGMENTER_*`` keys are read).
    file_text
        The content of the TOML settings file, if one was given.
    read_file
        Reads the file named by ``SEGMENTER_<NAME>_FILE`` (or ``<name>_file`` in the TOML
        file) for a secret setting such as ``redis_password``.

    Raises
    ------
    ConfigError
        Naming the first key that is unknown or has a bad value.

    Examples
    --------
    >>> s = load_settings({"SEGMENTER_N_CLUSTERS": "6"}, 'group_id = "g1"')
    >>> (s.n_clusters, s.group_id)
    (6, 'g1')
    >>> load_settings({"SEGMENTER_N_CLUSTERS": "six"})
    Traceback (most recent call last):
    ...
    stream.errors.ConfigError: config SEGMENTER_N_CLUSTERS: expected an integer, got 'six'
    >>> secrets = {"/run/secrets/redis": "s3cret"}
    >>> load_settings({"SEGMENTER_REDIS_PASSWORD_FILE": "/run/secrets/redis"},
    ...               read_file=secrets.__getitem__).redis_password
    's3cret'
    """
    known = {f.name: _FIELD_TYPES[str(f.type)] for f in fields(Settings) if f.name != "extra"}
    secret_files = {n + SECRET_FILE_SUFFIX: n for n in known if is_secret(n)}
    values: dict[str, Any] = {}
    extra: dict[str, str] = {}
    if file_text is not None:
        try:
            doc = tomllib.loads(file_text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("<settings file>", f"is not valid TOML: {exc}") from None
        for key, raw in doc.items():
            if key == "kafka" and isinstance(raw, dict):
                # [kafka] table: extra librdkafka properties passed through as they are.
                # An unquoted dotted key (security.protocol = ...) is a nested table in
                # TOML: flatten it back to the dotted property name.
                extra.update(_flatten(raw))
                continue
            if key in secret_files:
                name = secret_files[key]
                if name in doc:
                    raise ConfigError(key, f"cannot be set together with {name}: set one")
                values[name] = _read_secret(key, raw, read_file)
                continue
            if key not in known:
                raise ConfigError(key, "is not a known setting (see docs/configuration.md)")
            values[key] = _coerce(key, raw, known[key])
    for var, raw in env.items():
        if not var.startswith(ENV_PREFIX) or var == CONFIG_FILE_VAR:
            continue
        name = var[len(ENV_PREFIX) :].lower()
        if name.startswith("kafka__"):
            # SEGMENTER_KAFKA__SECURITY__PROTOCOL -> security.protocol
            extra[name[len("kafka__") :].replace("__", ".")] = raw
            continue
        if name in secret_files:
            if ENV_PREFIX + secret_files[name].upper() in env:
                other = var[: -len(SECRET_FILE_SUFFIX)]
                raise ConfigError(var, f"cannot be set together with {other}: set one")
            values[secret_files[name]] = _read_secret(var, raw, read_file)
            continue
        if name not in known:
            raise ConfigError(var, "is not a known setting (see docs/configuration.md)")
        values[name] = _coerce(var, raw, known[name])
    try:
        return Settings(**values, extra=extra)
    except ConfigError as exc:
        # Name the variable the user actually set, when it came from the environment.
        env_name = ENV_PREFIX + exc.key.upper()
        for var in (env_name, env_name + SECRET_FILE_SUFFIX.upper()):
            if var in env:
                raise ConfigError(var, str(exc).split(": ", 1)[1]) from None
        raise


def _read_secret(key: str, path: Any, read_file: Callable[[str], str]) -> str:
    """Read the secret in file ``path``; a :class:`ConfigError` naming ``key`` if it
    cannot be read (the message names the file, never its content)."""
    if not isinstance(path, str) or not path:
        raise ConfigError(key, "must name a file")
    try:
        return read_file(path)
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(key, f"cannot read the secret file {path}: {why}") from None
