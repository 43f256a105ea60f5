"""The ``segmenter`` command.

Settings are built here, once, from the environment and the optional file, and passed
down; nothing else reads the environment.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from threading import Event as StopFlag
from typing import Any

from consumers.exit_codes import EXIT_CONFIG, EXIT_ERROR, EXIT_NOT_FOUND, EXIT_OK
from stream.errors import ConfigError, ModelError, SegmenterError
from stream.settings import CONFIG_FILE_VAR, Settings, load_settings


def build_settings(config: str | None) -> Settings:
    path = config or os.environ.get(CONFIG_FILE_VAR)
    text = None
    if path:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(CONFIG_FILE_VAR, f"cannot read {path}: {exc.strerror}") from None
    return load_settings(os.environ, text)


#: After a stop signal, how long the batch in hand may take before the process gives up.
SHUTDOWN_DEADLINE_S = 60.0


def stop_on_signals() -> StopFlag:
    """SIGTERM/SIGINT: stop fetching, finish the batch in hand, commit, exit 0. A second
    signal, or a batch still unfinished after SHUTDOWN_DEADLINE_S, exits at once with code
    1 and commits nothing (the batch is replayed on restart; nothing is lost)."""
    stop = StopFlag()
    log = logging.getLogger("segmenter")

    def give_up() -> None:
        log.error("shutdown did not finish in time: exiting without committing the batch")
        os._exit(EXIT_ERROR)

    def handler(signum: int, frame: object) -> None:
        if stop.is_set():
            give_up()
        log.info("signal %d: finishing the batch in hand", signum)
        stop.set()
        timer = threading.Timer(SHUTDOWN_DEADLINE_S, give_up)
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.app import Segmenter, tune_collector

    stop = stop_on_signals()  # first: a signal during start-up must also end cleanly
    seg = Segmenter(settings)
    seg.start()
    tune_collector()
    stop_http = seg.serve_http()
    log = logging.getLogger("segmenter")
    log.info(
        "segmenter running: group %s, metrics on http://%s:%d/metrics",
        settings.group_id,
        settings.metrics_host,
        settings.metrics_port,
    )
    try:
        stats = seg.run(stop, idle_exit_s=args.idle_exit)
    finally:
        seg.close()
        stop_http()
    elapsed = time.monotonic() - stats.started_at
    log.info(
        "stopped: %d messages in %d batches (%.0f/s), %d dead letters, %d segment changes",
        stats.messages,
        stats.batches,
        stats.messages / max(elapsed, 1e-9),
        stats.dead_letters,
        stats.changes,
    )
    return EXIT_OK


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    from consumers import replay

    return replay.run(settings, args)


def print_segments(settings: Settings) -> int:
    from state.redis_store import RedisStore

    store = RedisStore.from_settings(settings)
    store.ping()
    catalogue = store.read_catalogue()
    if not catalogue:
        print("no segments yet: the model is still warming up, or nothing was processed")
        return EXIT_NOT_FOUND
    from stream.messages import iso_ms

    wm = group_watermark(store, settings, int(time.time() * 1000))
    print(f"event-time watermark: {iso_ms(wm) if wm else 'none yet'}")
    cols = (
        "events_30d",
        "frequency",
        "monetary",
        "avg_order_value",
        "days_without_purchase",
        "days_since_last_event",
        "conversion_rate_365d",
        "price_level",
    )
    short = (
        "events_30d",
        "orders",
        "spend",
        "basket",
        "days_no_order",
        "days_quiet",
        "conv_365d",
        "price",
    )
    width = max(16, *(len(e["name"]) for e in catalogue))
    print(f"{'id':>2}  {'name':{width}} {'users':>6}  " + "  ".join(f"{c:>14}" for c in short))
    for e in catalogue:
        prof = e["profile"]
        vals = "  ".join(f"{prof[c]:>14.2f}" for c in cols)
        print(f"{e['segment']:>2}  {e['name']:{width}} {e['size']:>6}  {vals}")
    for e in catalogue:
        print(f"  {e['name']}: {e['description']}")
    return EXIT_OK


def cmd_segments(settings: Settings, args: argparse.Namespace) -> int:
    return print_segments(settings)


def _open_user(settings: Settings, user_id: str) -> tuple[Any, dict[str, str] | None]:
    """The store and the user's hash (None, with a message, for an unknown user).

    ``user_id`` is the raw id: pseudonymised here when the segmenter stores pseudonyms."""
    from consumers.forget import stored_user_id
    from state.redis_store import RedisStore

    store = RedisStore.from_settings(settings)
    store.ping()
    user = store.read_user(stored_user_id(settings, user_id))
    if user is None:
        print(f"no state for user {user_id!r}", file=sys.stderr)
    return store, user


def cmd_inspect(settings: Settings, args: argparse.Namespace) -> int:
    import orjson

    from consumers.forget import stored_user_id
    from state.user_states import STATE_FIELD

    store, user = _open_user(settings, args.user)
    if user is None:
        return EXIT_NOT_FOUND
    print(f"{store.keys.user(stored_user_id(settings, args.user))}")
    for k in sorted(user):
        if k == STATE_FIELD:
            where = f"{len(user[k])} characters of base64" if user[k] else "in the state key"
            print(f"  {k:28} (internal state, {where})")
        elif k != "features":
            print(f"  {k:28} {user[k]}")
    print("  features:")
    for k, v in orjson.loads(user.get("features", "{}")).items():
        print(f"    {k:26} {'never' if v is None else v}")
    return EXIT_OK


def cmd_explain(settings: Settings, args: argparse.Namespace) -> int:
    """Why a user is in their segment: distances to every centre and what drove it."""
    import orjson

    from consumers.forget import stored_user_id
    from stream.features import compute_features, full_features
    from stream.messages import iso_ms
    from stream.model import SegmentModel
    from stream.naming import population_profile
    from stream.scaling import to_vector

    store, user = _open_user(settings, args.user)
    if user is None:
        return EXIT_NOT_FOUND
    checkpoint = store.load_model()
    if checkpoint is None:
        print("no model checkpoint in Redis yet", file=sys.stderr)
        return EXIT_NOT_FOUND
    model = SegmentModel(settings.model_params())
    model.adopt(checkpoint)
    if not model.ready:
        print("the model is still warming up: no segments yet", file=sys.stderr)
        return EXIT_NOT_FOUND
    names = {e["segment"]: e["name"] for e in store.read_catalogue()}
    # The features as of the group's clock now, not as of the user's last write.
    wm = group_watermark(store, settings, int(time.time() * 1000))
    state = store.load_states([stored_user_id(settings, args.user)]).popitem()[1]
    features = (
        full_features(orjson.loads(user["features"]))
        if state is None
        else compute_features(state, wm, settings.rfm_horizon)
    )
    z = model.scale(to_vector(features, model.params.features))
    dist = model.distances(z)
    current = int(user["segment"]) if user.get("segment") else None
    d = model.decide(current, z, dist, settings.hysteresis_margin)
    typical = population_profile(model.scaler, model.population)
    print(
        f"user {args.user}: segment {user.get('segment', '-')} "
        f"({names.get(current, user.get('segment_name', '-')) if current is not None else '-'}), "
        f"model version {model.version}, RFM {user.get('rfm', '-')}"
    )
    print(f"features as of the watermark, {iso_ms(wm) if wm else 'none yet'}")
    print(f"\n  {'feature':26} {'user':>12} {'typical':>12}")
    for name in model.params.features:
        value = features.get(name)
        shown = "never" if value is None else f"{value:.2f}"
        print(f"  {name:26} {shown:>12} {typical[name]:>12.2f}")
    print(f"\n  {'segment':>7} {'name':18} {'distance':>9}")
    for j in sorted(range(len(dist)), key=lambda j: dist[j]):
        sid = model.ids[j]
        mark = "  <- current" if sid == current else ""
        print(f"  {sid:>7} {names.get(sid, '?'):18} {dist[j]:>9.3f}{mark}")
    if current is not None and model.slot(current) is None:
        print(f"  segment {current} was retired; the user is queued to move")
    print(f"\n  margin to the runner-up ({d.runner_up}): {d.margin:.3f}")
    print(f"  features that drove it: {', '.join(d.top_features) or 'none stands out'}")
    if d.segment != current:
        print(
            f"  with the current centres it moves to segment {d.segment} at its next look: "
            "its next event, or the sweep when its timer or a change of segments comes due"
        )
    return EXIT_OK


def cmd_forget(settings: Settings, args: argparse.Namespace) -> int:
    """Erase a user from Redis and tombstone them on segments.current (idempotent)."""
    from consumers.forget import forget_user, stored_user_id

    stored = stored_user_id(settings, args.user)
    shown = args.user if stored == args.user else f"{args.user} (pseudonym {stored})"
    if not args.yes:
        if not sys.stdin.isatty():
            print("error: forget erases a user's data: confirm with --yes", file=sys.stderr)
            return EXIT_CONFIG
        answer = input(f"erase user {shown} from Redis and {settings.current_topic}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing erased", file=sys.stderr)
            return EXIT_CONFIG
    report = forget_user(settings, args.user, settle_s=args.settle)
    first, *again = report.erasures
    if first.removed_anything:
        print(f"user {shown}: removed from Redis")
        for line in first.describe():
            print(f"  {line}")
    else:
        print(f"user {shown}: nothing in Redis (already forgotten, or never seen)")
    for e in again:
        print("  written back by a batch in flight, removed again: " + ", ".join(e.describe()))
    if report.tombstone:
        print(f"tombstone written to {settings.current_topic} (key {stored})")
    else:
        print(f"no tombstone: topic {settings.current_topic} does not exist")
    if not report.settled:
        print(
            f"error: user {shown} keeps being written back: their events are still arriving. "
            "Stop them upstream, let the segmenter catch up, and run forget again.",
            file=sys.stderr,
        )
        return EXIT_ERROR
    return EXIT_OK


def group_watermark(store: Any, settings: Settings, now_ms: int) -> int:
    """The consumer group's event-time watermark, from the partition clocks in Redis."""
    from stream.watermark import Watermark

    w = Watermark(int(settings.watermark_lateness_s * 1000), int(settings.watermark_idle_s * 1000))
    w.merge(store.share_watermark({}))
    return w.advance(now_ms)


def cmd_model(settings: Settings, args: argparse.Namespace) -> int:
    """Model versions, lineage history, rollback to a kept version, refit on the user
    sample as of the watermark."""
    from state.redis_store import RedisStore
    from stream import checkpoint as ckpt
    from stream.messages import iso_ms

    store = RedisStore.from_settings(settings)
    store.ping()
    now_ms = int(time.time() * 1000)
    every_ms = int(settings.checkpoint_interval_s * 1000)
    if args.action in ("rollback", "refit"):
        if args.action == "rollback":
            if args.version is None:
                print("error: model rollback needs a VERSION", file=sys.stderr)
                return EXIT_CONFIG
            old = store.model_version(args.version)

            def build(cur: ckpt.Checkpoint | None) -> tuple[ckpt.Checkpoint, list[dict[str, Any]]]:
                return ckpt.rollback(cur or old, old, now_ms)

        else:
            wm = group_watermark(store, settings, now_ms)
            params = settings.model_params()
            snapshot = store.snapshot(wm, settings.rfm_horizon, used=params.features)

            def build(cur: ckpt.Checkpoint | None) -> tuple[ckpt.Checkpoint, list[dict[str, Any]]]:
                if cur is None:
                    raise ModelError("there is no model yet; there is nothing to refit")
                return ckpt.refit(cur, snapshot, params, now_ms, wm)

        new, events = store.commit_model(build, every_ms, now_ms, keep=settings.model_versions_kept)
        queued = store.queue_members(ckpt.retired_ids(events), new.version)
        what = (
            f"version {args.version} is current again"
            if args.action == "rollback"
            else (f"refitted: {new.k_choice.reason if new.k_choice else ''}")
        )
        print(f"{what}; new version {new.version}, segments {list(new.ids)}")
        for e in events:
            print(f"  {_lineage(e)}")
        print(f"running processes adopt it at their next sync; {queued} users queued to move")
        return EXIT_OK
    if args.action == "history":
        current = store.load_model()
        if current is None:
            print("no model yet")
            return EXIT_NOT_FOUND
        if current.k_choice:
            print(f"k = {current.k}: {current.k_choice.reason}")
        for e in current.events:
            print(f"{iso_ms(e['at_ms'])}  v{e['version']:<6} {_lineage(e)}  ({e['cause']})")
        return EXIT_OK
    versions = store.model_versions()
    if not versions:
        print("no model versions yet")
        return EXIT_NOT_FOUND
    print(f"{'version':>7}  {'epoch':>5}  {'saved at':24}  {'updates':>9}  segments / note")
    for v in versions:
        saved = iso_ms(v["saved_at_ms"]) if v["saved_at_ms"] else "-"
        note = f"{v['segments']}"
        if v["rolled_back_from"]:
            note += f"  rollback to {v['rolled_back_from']}"
        if not v["ready"]:
            note = "warming up"
        print(f"{v['version']:>7}  {v['epoch']:>5}  {saved:24}  {v['updates']:>9}  {note}")
    return EXIT_OK


def _lineage(e: dict[str, Any]) -> str:
    """One lineage event in words: 'segment 7 born (split from 2)'."""
    if "segment" not in e:
        # A refit that kept every segment records itself alone.
        return f"{e['event']}: every segment kept its id"
    extra = ""
    if "from" in e:
        extra = f" (split from {e['from']})"
    elif "into" in e:
        extra = f" (merged into {e['into']})"
    return f"segment {e['segment']} {e['event']}{extra}"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="segmenter",
        description="Real-time customer segmentation: Kafka events in, segments in Redis "
        "and on Kafka out. Settings: SEGMENTER_* environment variables or --config FILE.",
        epilog="Exit codes: 0 success; 1 runtime error (broker or Redis unreachable, with "
        "what to do); 2 bad configuration or usage; 3 not found (user, version); "
        "replay only: 4 some events not confirmed by the broker. "
        "'segmenter COMMAND --help' describes each command.",
    )
    p.add_argument("--config", help=f"TOML settings file (or ${CONFIG_FILE_VAR})")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="consume, segment, write Redis, publish changes")
    run.add_argument(
        "--idle-exit",
        type=float,
        default=None,
        metavar="S",
        help="exit after S seconds without input (default: run until signalled)",
    )
    run.set_defaults(fn=cmd_run)

    rep = sub.add_parser(
        "replay",
        help="send a file of events (JSON lines or CSV) to the input topics",
        description="Send FILE's events to the input topics as live traffic would go: "
        "purchases to SEGMENTER_PURCHASES_TOPIC, other types to SEGMENTER_CLICKS_TOPIC, "
        "keyed by user_id. JSON lines: one event object per line. CSV: a header row of "
        "event field names, then one event per row (empty cell = absent field). gzip is "
        "recognised; - reads standard input. A malformed line is sent as it is (the "
        "segmenter dead-letters it with a reason) and counted, unless --skip-invalid. "
        "Exit codes: 0 sent and confirmed; 1 broker unreachable or input topics missing; "
        "2 bad usage or unreadable file; 4 some events not confirmed by the broker.",
    )
    rep.add_argument("file", help="the events file, or - for standard input")
    rep.add_argument(
        "--format", choices=("jsonl", "csv"), help="default: csv for *.csv[.gz], else jsonl"
    )
    rep.add_argument("--rate", type=float, default=None, help="events/s (default: max)")
    rep.add_argument("--dry-run", action="store_true", help="read and count, send nothing")
    rep.add_argument(
        "--skip-invalid", action="store_true", help="leave malformed lines out, do not send them"
    )
    rep.set_defaults(fn=cmd_replay)

    seg = sub.add_parser("segments", help="the segment catalogue with sizes and profiles")
    seg.set_defaults(fn=cmd_segments)

    ins = sub.add_parser("inspect", help="a user's segment and features from Redis")
    ins.add_argument("user")
    ins.set_defaults(fn=cmd_inspect)

    exp = sub.add_parser("explain", help="why a user is in their segment")
    exp.add_argument("user")
    exp.set_defaults(fn=cmd_explain)

    fgt = sub.add_parser(
        "forget",
        help="erase a user everywhere the segmenter holds them (idempotent)",
        description="Erase USER (the raw id; pseudonymised first when "
        "SEGMENTER_PSEUDONYMISE_USER_IDS is on) from Redis: user hash, state (features, "
        "offsets, de-duplication keys), segment memberships, reassessment queue; then write "
        "a tombstone (null value, key = the user id as published) to the compacted "
        "segments.current. Run it when the user's events have stopped. Exit codes: 0 erased, "
        "or nothing was there; 1 Redis or the broker unreachable (run it again), or the "
        "user's events still arriving; 2 bad configuration, or not confirmed.",
    )
    fgt.add_argument("user", help="the user id, as in the input events")
    fgt.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    fgt.add_argument(
        "--settle",
        type=float,
        default=3.0,
        metavar="S",
        help="wait S seconds and erase again anything a batch in flight wrote back, "
        "before the tombstone (default: 3; 0 skips the check)",
    )
    fgt.set_defaults(fn=cmd_forget)

    mod = sub.add_parser(
        "model",
        help="model versions, segment lineage history, rollback to a version, refit",
        description="versions: the kept checkpoints. history: segments born, retired, merged "
        "and split. rollback VERSION: make a kept version current again (processes adopt it "
        "at their next sync). refit: fit the centres afresh on the user sample as of the "
        "watermark, k chosen "
        "by silhouette, matched to the current segments so ids keep their meaning.",
    )
    mod.add_argument("action", choices=("versions", "history", "rollback", "refit"))
    mod.add_argument("version", nargs="?", type=int, help="for rollback: the version")
    mod.set_defaults(fn=cmd_model)

    return p


def main(argv: Sequence[str] | None = None) -> int:
    return dispatch(parser().parse_args(argv))


def dispatch(args: argparse.Namespace) -> int:
    """Run the command ``args`` chose (its ``fn``) with the settings of ``--config`` and the
    environment; a configuration or runtime error is one line on stderr and its exit code."""
    try:
        settings = build_settings(args.config)
        logging.basicConfig(
            level=settings.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        return int(args.fn(settings, args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except SegmenterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
