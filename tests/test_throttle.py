"""The load cap on the source (tasks/throttle.py): its rate measured on the destination while a real
copy runs, a window's end and a live change switching it, its pace shared by separate processes, and
the bad inputs it refuses."""
from __future__ import annotations

import bisect
import json
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import bson
import httpx
import pytest
from bson.raw_bson import RawBSONDocument

from mongo_migrate.blocks.spec import Caps, ThrottleSpec, ThrottleWindow, overlapping_windows, parse_spec
from mongo_migrate.tasks.throttle import COPY, SYNC, Cap, effective_caps, limiter, set_live
from tests.conftest import ROOT, insert_raw, make_spec
from tests.test_faults import start_cli, wait_for, write_spec


# -- the windows, as plain functions -----------------------------------------------------------------
def window(start: str, end: str, tz: str = "UTC", **caps) -> ThrottleWindow:
    return ThrottleWindow(start=start, end=end, timezone=tz, **(caps or {"docs_per_s": 100}))


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def test_a_window_holds_from_its_start_to_its_end_in_its_own_time_zone():
    paris = window("08:00", "20:00", "Europe/Paris")
    # Paris is UTC+1 in January, UTC+2 in July
    assert not paris.contains(at("2026-01-15T06:59"))
    assert paris.contains(at("2026-01-15T07:00"))
    assert paris.contains(at("2026-01-15T18:59"))
    assert not paris.contains(at("2026-01-15T19:00"))
    assert paris.contains(at("2026-07-15T06:00")) and not paris.contains(at("2026-07-15T18:00"))
    night = window("22:00", "06:00")  # past midnight
    assert night.contains(at("2026-01-15T23:30")) and night.contains(at("2026-01-15T05:59"))
    assert not night.contains(at("2026-01-15T06:00")) and not night.contains(at("2026-01-15T21:59"))
    assert window("20:00", "24:00").contains(at("2026-01-15T23:59"))
    assert not window("20:00", "24:00").contains(at("2026-01-15T00:00"))


def test_overlapping_windows_are_found_across_time_zones_and_midnight():
    assert overlapping_windows([window("08:00", "12:00"), window("12:00", "13:00")]) is None
    assert overlapping_windows([window("08:00", "12:00"), window("11:59", "13:00")]) == (0, 1)
    assert overlapping_windows([window("22:00", "06:00"), window("05:00", "07:00")]) == (0, 1)
    # 20:00 in Paris is 19:00 UTC in winter and 18:00 in summer: 18:30 UTC overlaps in winter only
    assert overlapping_windows([window("08:00", "20:00", "Europe/Paris"), window("18:30", "19:00")]) == (0, 1)
    assert overlapping_windows([window("08:00", "20:00", "Europe/Paris"), window("19:00", "23:00")]) is None
    assert overlapping_windows([window("01:00", "02:00"), window("03:00", "04:00"),
                                window("08:00", "20:00"), window("19:00", "21:00")]) == (2, 3)


def test_the_live_cap_wins_over_a_window_and_a_window_over_the_top_level_caps():
    spec = ThrottleSpec(docs_per_s=4000, sync_docs_per_s=50,
                        windows=[window("08:00", "20:00", docs_per_s=1000, mb_per_s=2)])
    inside, outside = at("2026-01-15T12:00"), at("2026-01-15T21:00")
    assert effective_caps(spec, None, outside) == {COPY: Cap(4000, None, "spec"), SYNC: Cap(50, None, "spec")}
    # a window's caps replace the top-level ones wholly: it caps no sync here
    assert effective_caps(spec, None, inside) == {COPY: Cap(1000, 2, "window 08:00-20:00 UTC"), SYNC: None}
    assert effective_caps(spec, Caps(sync_mb_per_s=3), inside) == {COPY: None, SYNC: Cap(None, 3, "live")}
    assert effective_caps(spec, Caps(), inside) == {COPY: None, SYNC: None}  # --off
    assert effective_caps(ThrottleSpec(), None, inside) == {COPY: None, SYNC: None}
    # a batch costs what its slowest cap makes it cost
    assert Cap(1000, 2, "spec").cost_s(100, 1_000_000) == pytest.approx(0.5)
    assert Cap(1000, 2, "spec").cost_s(1000, 1_000) == pytest.approx(1.0)


# -- bad input ---------------------------------------------------------------------------------------
BASE = {"source": {"uri": "mongodb://a:27017"}, "destination": {"uri": "mongodb://b:27017"}}


@pytest.mark.parametrize("throttle, message", [
    ({"docs_per_s": 0}, "spec.yaml: throttle.docs_per_s: Input should be greater than 0"),
    ({"mb_per_s": -5}, "spec.yaml: throttle.mb_per_s: Input should be greater than 0"),
    ({"sync_docs_per_s": "fast"},
     "spec.yaml: throttle.sync_docs_per_s: Input should be a valid number, unable to parse string as a number"),
    ({"windows": [{"start": "8h", "end": "20:00", "docs_per_s": 10}]},
     'spec.yaml: throttle.windows.0.start: not a time of day: give HH:MM from 00:00 to 23:59, e.g. "08:00"'),
    ({"windows": [{"start": "08:00", "end": "25:00", "docs_per_s": 10}]},
     'spec.yaml: throttle.windows.0.end: not a time of day: give HH:MM from 00:00 to 23:59, e.g. "08:00"'),
    ({"windows": [{"start": "08:00", "end": "20:00", "timezone": "Europe/Pariss", "docs_per_s": 10}]},
     "spec.yaml: throttle.windows.0.timezone: unknown time zone 'Europe/Pariss': give an IANA name such as "
     "Europe/Paris or UTC"),
    ({"windows": [{"start": "08:00", "end": "20:00", "timezone": "Europe/Paris", "docs_per_s": 10},
                  {"start": "06:00", "end": "07:30", "docs_per_s": 10}]},
     "spec.yaml: throttle.windows: windows 0 (08:00-20:00 Europe/Paris) and 1 (06:00-07:30 UTC) overlap"),
    ({"windows": [{"start": "08:00", "end": "08:00", "docs_per_s": 10}]},
     "spec.yaml: throttle.windows.0: start and end are both 08:00: a window needs a length"),
    ({"windows": [{"start": "08:00", "end": "09:00"}]},
     "spec.yaml: throttle.windows.0: a window caps nothing: give docs_per_s, mb_per_s, sync_docs_per_s or "
     "sync_mb_per_s"),
    ({"docs_per_s": 10, "burst": 5}, "spec.yaml: throttle.burst: unknown key"),
])
def test_a_bad_throttle_in_the_spec_is_refused_naming_the_key(throttle, message):
    from mongo_migrate.blocks.errors import SpecError

    with pytest.raises(SpecError) as caught:
        parse_spec({**BASE, "throttle": throttle}, "spec.yaml")
    assert str(caught.value) == message


def test_bad_throttle_input_through_the_cli_is_one_line_and_exit_2(run_cli, tmp_path):
    bad_spec = tmp_path / "spec.yaml"
    bad_spec.write_text(json.dumps({**BASE, "throttle": {"docs_per_s": -1}}))
    good_spec = tmp_path / "good.json"
    good_spec.write_text(json.dumps(BASE))
    cases = [
        (("run", str(bad_spec)), "mongo-migrate: error: spec.yaml: throttle.docs_per_s: Input should be "
                                 "greater than 0"),
        (("throttle", str(good_spec), "--docs-per-s", "0"),
         "mongo-migrate: error: --docs-per-s: input should be greater than 0 (documents or MB per second)"),
        (("throttle", str(good_spec), "--sync-mb-per-s", "lots"),
         "mongo-migrate: error: --sync-mb-per-s: input should be a valid number, unable to parse string as a "
         "number (documents or MB per second)"),
        (("throttle", str(good_spec), "--docs-per-s", "10", "--off"),
         "mongo-migrate: error: --docs-per-s goes without --off and --reset"),
    ]
    with ThreadPoolExecutor(len(cases)) as pool:  # side by side: each command's start-up is seconds
        done = list(pool.map(lambda case: run_cli(*case[0]), cases))
    for (args, message), ran in zip(cases, done):
        assert (ran.returncode, ran.stderr.strip()) == (2, message), args


# -- the cap on real copies ----------------------------------------------------------------------------
class Counts:
    """The target collection's document count, sampled with the time (monotonic)."""

    def __init__(self, coll) -> None:
        self.coll = coll
        self.times: list[float] = []
        self.docs: list[int] = []

    def sample(self) -> int:
        self.times.append(time.monotonic())
        self.docs.append(self.coll.estimated_document_count())
        return self.docs[-1]

    def at(self, t: float) -> float:
        i = min(max(bisect.bisect_left(self.times, t), 1), len(self.times) - 1)
        t0, t1, d0, d1 = self.times[i - 1], self.times[i], self.docs[i - 1], self.docs[i]
        return d0 + (d1 - d0) * (t - t0) / (t1 - t0) if t1 > t0 else d1

    def rate(self, start: float, end: float) -> float:
        return (self.at(end) - self.at(start)) / (end - start)

    def until(self, t: float, proc) -> None:
        while time.monotonic() < t:
            self.sample()
            assert proc.poll() is None, f"the run ended early:\n{proc.communicate()[1][-3000:]}"
            time.sleep(0.1)


def seconds_to_minute() -> float:
    now = datetime.now(timezone.utc)
    return 60 - now.second - now.microsecond / 1e6


def test_copy_cap_holds_switches_when_its_window_ends_and_follows_a_live_change(
        source, dest, src_client, dst_client, prefect_api, run_cli, tmp_path):
    """One copy of 4 ranges on 4 workers: 1,000 docs/s inside a window that ends at the next minute
    (within 10% over 20 s), the spec's 4,000 docs/s once it has ended, then 2,000 docs/s set live with
    the CLI (reached within 2 s), then --off."""
    # enough that the copy never runs dry before the last measure (≤ 60 s at 1,000, the seconds at 4,000
    # until the throttle command has returned, 5 s at 2,000): a run that ran out of documents once read
    # as a cap missed (1,556 docs/s "at 2,000")
    total = 200_000
    insert_raw(src_client, "shop.orders", [RawBSONDocument(bson.encode({"_id": i, "n": i})) for i in range(total)])
    # the window is [the minute now, the next minute) UTC: the run has to start early enough in the
    # minute for 20 s of measure inside it
    if seconds_to_minute() < 42:
        time.sleep(seconds_to_minute() + 0.2)
    now = datetime.now(timezone.utc)
    ends = now.replace(second=0, microsecond=0).timestamp() + 60
    start_clock, end_clock = f"{now:%H:%M}", datetime.fromtimestamp(ends, timezone.utc).strftime("%H:%M")
    spec_file = write_spec(
        tmp_path / "spec.json", source, dest, objects=[{"database": "shop"}],
        copy_options={"range_docs": total // 4, "batch_docs": 100, "parallel_workers": 4},
        throttle={"docs_per_s": 4000, "windows": [
            {"start": start_clock, "end": end_clock, "timezone": "UTC", "docs_per_s": 1000}]})
    window_ends = time.monotonic() + (ends - time.time())
    counts = Counts(dst_client.shop.orders)
    proc = start_cli(prefect_api, "run", str(spec_file), "--json")
    try:
        wait_for(lambda: counts.sample() > 0, 60, "the copy to start", proc)
        started = time.monotonic()
        # 20 s of the window's cap, ending half a second before the window
        assert window_ends - 0.5 - started >= 21, "the copy started too late in the minute"
        counts.until(window_ends + 4, proc)
        in_window = counts.rate(window_ends - 20.5, window_ends - 0.5)
        assert in_window == pytest.approx(1000, rel=0.10), f"{in_window:.0f} docs/s in the window"
        after_window = counts.rate(window_ends + 2, window_ends + 4)
        assert after_window == pytest.approx(4000, rel=0.10), f"{after_window:.0f} docs/s after the window"
        print(f"window 1,000 docs/s: {in_window:.0f} docs/s over 20 s; after it 4,000: {after_window:.0f}")

        changed = run_cli("throttle", str(spec_file), "--docs-per-s", "2000")
        set_at = time.monotonic()  # the live cap was written before the command returned
        assert changed.returncode == 0, changed.stderr
        assert changed.stdout.strip() == "load cap: copy 2,000 docs/s (live); sync none"
        counts.until(set_at + 5, proc)
        assert counts.docs[-1] < total, "the copy ran out of documents before the live cap was measured"
        live = counts.rate(set_at + 2, set_at + 5)
        assert live == pytest.approx(2000, rel=0.10), f"{live:.0f} docs/s 2 s after the live change"
        print(f"live 2,000 docs/s: {live:.0f} docs/s from 2 to 5 s after the command returned")

        progress = httpx.get(f"{prefect_api}/artifacts/full-copy-progress/latest").json()["description"]
        assert "; load cap 2,000 docs/s (live), now " in progress, progress

        shown = run_cli("status", str(spec_file))
        assert shown.returncode == 0, shown.stderr
        cap_line = next(line for line in shown.stdout.splitlines() if line.startswith("load cap: "))
        assert cap_line.startswith("load cap: copy 2,000 docs/s (live), achieved ")

        assert run_cli("throttle", str(spec_file), "--off").stdout.strip() == "load cap: copy none; sync none"
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    assert json.loads(out)["status"] == "completed"
    assert dst_client.shop.orders.count_documents({}) == total


def test_processes_share_one_pace_through_the_destination(source, dest, dst_client):
    """Two processes booking slots of 100 documents as fast as the cap lets them: together they
    get the cap, not twice it."""
    data = {"source": {"uri": source.admin_uri()}, "destination": {"uri": dest.admin_uri()},
            "throttle": {"sync_docs_per_s": 1500}}
    script = textwrap.dedent(f"""
        import sys, time
        from mongo_migrate.blocks.spec import parse_spec
        from mongo_migrate.tasks.throttle import SYNC, limiter
        pace = limiter(parse_spec({data!r}))
        pace.take(SYNC, 0, 0)  # connected
        print("ready", flush=True)
        sys.stdin.readline()
        counting, booked = time.monotonic() + 1, 0  # a second to settle: the first slots come at once
        while time.monotonic() < counting:
            pace.take(SYNC, 100, 0)
        end = time.monotonic() + 5
        while time.monotonic() < end:
            pace.take(SYNC, 100, 0)
            booked += 100
        print(booked, flush=True)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, cwd=ROOT) for _ in range(2)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        booked = [int(p.stdout.readline()) for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    # 5 s at 1,500 docs/s (give or take the slot each process books last)
    print(f"two processes booked {booked} documents in 5 s under one cap of 1,500 docs/s")
    assert sum(booked) == pytest.approx(5 * 1500, rel=0.10), booked
    assert min(booked) > 0.3 * sum(booked), f"one process starved: {booked}"


def test_no_cap_books_nothing_and_a_live_cap_is_seen_within_a_second(source, dest, dst_client):
    spec = make_spec(source, dest)
    pace = limiter(spec)
    assert pace.take(COPY, 2000, 10**6) == 0.0
    assert dst_client.mongo_migrate_meta.throttle.count_documents({}) == 0
    set_live(spec, Caps(docs_per_s=100), "test")
    time.sleep(1.05)
    assert pace.current(COPY) == Cap(100, None, "live")
    pace.take(COPY, 100, 0)  # books 1 s: the next one waits about that
    assert pace.take(COPY, 100, 0) == pytest.approx(1.0, abs=0.15)


def test_the_prefect_variable_sets_the_live_cap_on_the_destination(source, dest, dst_client, caplog):
    """The flow's watcher (flows/throttle.py) against the session's Prefect server: a value set in the
    UI reaches the destination within 2 s; a bad one is refused naming the key; deleted, the spec's
    caps apply again."""
    from prefect.variables import Variable

    from mongo_migrate.flows.throttle import VARIABLE, VariableWatcher
    from mongo_migrate.tasks.throttle import read_live

    spec = make_spec(source, dest, throttle={"docs_per_s": 100})
    Variable.set(VARIABLE, {"docs_per_s": 5000, "sync_mb_per_s": 2}, overwrite=True)
    watcher = VariableWatcher(spec)
    try:
        wait_for(lambda: read_live(spec) == Caps(docs_per_s=5000, sync_mb_per_s=2), 2, "the cap set before the run")
        Variable.set(VARIABLE, {"off": True}, overwrite=True)
        wait_for(lambda: read_live(spec) == Caps(), 2, "the cap lifted from the Variable")
        Variable.set(VARIABLE, {"docs_per_s": -3}, overwrite=True)
        wait_for(lambda: "Input should be greater than 0" in caplog.text, 2, "the bad value refused")
        assert "Variable mongo-migrate-throttle: docs_per_s: Input should be greater than 0; the load cap stays " \
               "as it is" in caplog.text
        assert read_live(spec) == Caps()
        Variable.unset(VARIABLE)
        wait_for(lambda: dst_client.mongo_migrate_meta.throttle.count_documents({}) == 0, 2,
                 "the live cap dropped with the Variable")
    finally:
        watcher.stop()
        Variable.unset(VARIABLE)


def test_the_sync_cap_paces_a_burst_of_changes(src_client, dst_client, spec_for):
    """4,000 inserts written at once reach the destination at the sync's cap (1,000 docs/s), then
    equal byte for byte."""
    import threading

    from mongo_migrate.tasks.sync.engine import ChangeSync
    from mongo_migrate.tasks.sync.position import save_start_point
    from tests.conftest import assert_same_documents

    spec = spec_for(migration_types=["full", "incremental"], objects=[{"database": "shop"}],
                    incremental_options={"batch_events": 100}, throttle={"sync_docs_per_s": 1000})
    save_start_point(spec, resumed=False)
    src_client.shop.docs.insert_many([{"_id": i, "pad": "x" * 100} for i in range(4000)])
    counts = Counts(dst_client.shop.docs)
    sync = ChangeSync(spec)
    thread = threading.Thread(target=sync.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: counts.sample() > 0, 30, "the first changes applied")
        first = time.monotonic()
        while counts.sample() < 4000 and time.monotonic() < first + 30:
            time.sleep(0.1)
        rate = counts.rate(first + 0.5, first + 3.0)
        print(f"sync capped at 1,000 docs/s: {rate:.0f} docs/s")
        assert rate == pytest.approx(1000, rel=0.10)
        assert counts.docs[-1] == 4000
    finally:
        sync.stop()
        thread.join(30)
    assert_same_documents(src_client, dst_client, "shop.docs")


def test_a_prefect_api_that_is_away_leaves_the_cap_as_it_is(source, dest, caplog):
    """The watcher's thread tells once that it cannot read the Variable and goes on trying; the cap on
    the destination, which the copy reads, is untouched."""
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    from mongo_migrate.flows.throttle import VariableWatcher
    from mongo_migrate.tasks.throttle import read_live

    spec = make_spec(source, dest)
    set_live(spec, Caps(docs_per_s=700), "test")
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api", PREFECT_CLIENT_MAX_RETRIES: 0}):
        watcher = VariableWatcher(spec)
    try:
        wait_for(lambda: "cannot be read" in caplog.text, 10, "the watcher to notice the API is away")
        time.sleep(2.5)  # more reads, still away: told once
        assert caplog.text.count("the Prefect Variable mongo-migrate-throttle cannot be read") == 1
        assert read_live(spec) == Caps(docs_per_s=700)
        assert limiter(spec).current(COPY) == Cap(700, None, "live")
    finally:
        started = time.monotonic()
        watcher.stop()
        assert time.monotonic() - started < 5
