"""Segment quality against the generator's ground truth and a batch baseline.

Starts its own Redis and broker on free loopback ports (stopped by PID at the end),
generates shoppers with known personas, runs one segmenter over them, then scores the
segments it left in Redis:

- adjusted Rand index and normalised mutual information against the personas;
- agreement (adjusted Rand index) with scikit-learn's batch KMeans on the same scaled
  feature snapshot, same k;
- silhouette of the live assignment on that snapshot;
- normalised entropy of the segment sizes (1 = equal sizes);
- flap rate: segment changes per user beyond each user's first segment.

    python -m loadtest.quality --users 1000 --events 100000
"""

from __future__ import annotations

import argparse
import math
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

from consumers import topics
from consumers.app import Segmenter
from consumers.devstack import servers
from loadtest.generator import produce_events
from state.redis_store import RedisStore
from stream.settings import Settings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--broker", choices=("auto", "kafka", "tansu"), default="auto")
    ap.add_argument("--out", default="loadtest/out/quality.md")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="segmenter-quality-") as tmp:
        rds = servers.start_redis(Path(tmp) / "redis")
        broker = servers.start_broker(Path(tmp) / "broker", prefer=args.broker)
        try:
            report = measure(args, broker, rds, Path(tmp))
        finally:
            broker.stop()
            rds.stop()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(report)
    return 0


def measure(
    args: argparse.Namespace, broker: servers.Server, rds: servers.Server, tmp: Path
) -> str:
    s = Settings(
        kafka_bootstrap=broker.address,
        redis_url=f"redis://{rds.address}/0",
        metrics_port=servers.free_port(),
        transactional=broker.kind == "kafka",
    )
    topics.create_topics(
        topics.admin_client(s), {s.clicks_topic: (4, {}), s.purchases_topic: (4, {})}
    )
    gt_path = tmp / "ground_truth.json"
    gen = produce_events(
        s.kafka_bootstrap,
        s.clicks_topic,
        s.purchases_topic,
        args.users,
        args.events,
        args.seed,
        None,
        30.0,
        str(gt_path),
    )
    seg = Segmenter(s)
    seg.start()
    stop = threading.Event()
    worker = threading.Thread(target=seg.run, args=(stop,))
    worker.start()
    deadline = time.monotonic() + 600
    while seg.stats.messages < gen.events_sent and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # let the warm-up assignments of the last turn finish
    stop.set()
    worker.join()
    seg.close()

    truth: dict[str, str] = orjson.loads(gt_path.read_bytes())["personas"]
    store = RedisStore.from_settings(s)
    users, live, vectors = [], [], []
    model = seg.model
    from stream.scaling import to_vector

    for uid in truth:
        h = store.read_user(uid)
        if h is None or "segment" not in h:
            continue
        users.append(uid)
        live.append(int(h["segment"]))
        vectors.append(to_vector(orjson.loads(h["features"])))
    catalogue = {e["segment"]: e for e in store.read_catalogue()}
    store.close()
    x = model.scale(np.stack(vectors))
    personas = [truth[u] for u in users]
    k = model.n_clusters
    batch = KMeans(n_clusters=k, n_init=10, random_state=args.seed).fit_predict(x)
    sizes = Counter(live)
    probs = [n / len(live) for n in sizes.values()]
    entropy = -sum(p * math.log(p) for p in probs) / math.log(k)
    flaps = max(0, seg.stats.changes - len(users)) / len(users)

    rows = [
        ("users segmented / in ground truth", f"{len(users)} / {len(truth)}"),
        ("events", f"{gen.events_sent}"),
        ("broker", broker.kind),
        ("adjusted Rand index vs personas", f"{adjusted_rand_score(personas, live):.3f}"),
        (
            "normalised mutual information vs personas",
            f"{normalized_mutual_info_score(personas, live):.3f}",
        ),
        ("agreement with batch KMeans (ARI)", f"{adjusted_rand_score(batch, live):.3f}"),
        ("batch KMeans ARI vs personas (reference)", f"{adjusted_rand_score(personas, batch):.3f}"),
        ("silhouette (live)", f"{silhouette_score(x, live):.3f}"),
        ("silhouette (batch KMeans, reference)", f"{silhouette_score(x, batch):.3f}"),
        ("segment size entropy (1 = equal)", f"{entropy:.3f}"),
        ("flap rate (changes per user after the first)", f"{flaps:.3f}"),
    ]
    lines = ["# Segment quality", "", "| measure | value |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    lines += ["", "| segment | name | users | personas in it |", "|---|---|---|---|"]
    for sid in sorted(sizes):
        mix = Counter(p for p, lab in zip(personas, live, strict=True) if lab == sid)
        top = ", ".join(f"{p} {n}" for p, n in mix.most_common(3))
        name = catalogue.get(sid, {}).get("name", "?")
        lines.append(f"| {sid} | {name} | {sizes[sid]} | {top} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
