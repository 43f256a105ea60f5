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
    assert [line.split()[0] for line in lines[:-1]] == [s.split()[0] for s in STAGES]
    assert "events/s of CPU alone" in lines[-1]
