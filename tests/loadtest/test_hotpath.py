"""The CPU-only batch path benchmark: it covers every event and every stage."""

from __future__ import annotations

from loadtest.hotpath import STAGES, backlog_messages, run


def test_every_event_goes_through_every_stage() -> None:
    messages = backlog_messages(300, 3000)
    assert len(messages) == 3000
    times = run(messages, batch=500)
    assert times.events == 3000
    # Each user update is one write; a batch has fewer users than events.
    assert 0 < times.user_updates < times.events
    assert times.write_bytes > 100 * times.user_updates
    assert all(times.seconds[s] > 0 for s in STAGES)
    lines = times.report().splitlines()
    assert [line.split()[0] for line in lines[: len(STAGES)]] == [s.split()[0] for s in STAGES]
    assert "events/s of CPU alone" in lines[len(STAGES)]
    # Then every user is re-decided once, as a sweep would.
    assert times.swept_users == len({key for _, key, _, _ in messages})
    assert times.sweep_s > 0 and times.sweep_us_per_user > 0
    assert lines[-1].startswith("sweep") and "per million users" in lines[-1]


def test_without_the_sweep() -> None:
    times = run(backlog_messages(50, 300), batch=100, sweep=False)
    assert times.swept_users == 0 and "sweep" not in times.report()
