"""flows/artifacts.py: inside artifacts_written_behind the steps do not wait for the Prefect API, every
artifact is there when the block ends, a progress bar's queued moves fold into one write, and a write
that fails is logged, not raised."""
from __future__ import annotations

import logging
import threading
import time

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.runtime import flow_run

import mongo_migrate.flows.artifacts as artifacts
import mongo_migrate.flows.progress as progress
from mongo_migrate.tasks.copy import CopyRange
from mongo_migrate.tasks.namespaces import CollectionPlan


def run_artifacts(run_id: str):
    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))


def test_writes_behind_fold_and_are_all_there_at_the_end(prefect_api, monkeypatch):
    calls: list[str] = []
    for name in ("create_progress_artifact", "update_progress_artifact"):
        real = getattr(artifacts, name)
        monkeypatch.setattr(artifacts, name,
                            lambda *a, _real=real, _name=name, **k: (calls.append(_name), _real(*a, **k))[1])
    api_free = threading.Event()

    @flow
    def steps() -> str:
        with artifacts.artifacts_written_behind():
            # the API is slow: the writer is held up behind a first write until the steps are done
            artifacts._write("slow", api_free.wait)
            bar = artifacts.ProgressBar(0.0, "copy of a.b", key="bar-test")
            for percent in (10.0, 55.0, 100.0):
                bar.move(percent, f"copy of a.b: {percent:g}%")
            artifacts.table("table-test", [{"item": "x", "status": "passed"}], "a table")
            assert calls == []  # nothing written yet, and the steps went on
            api_free.set()
        return str(flow_run.get_id())

    run_id = steps()
    # three moves queued behind the creation: one write, at the last value
    assert calls == ["create_progress_artifact"]
    found = {a.key or a.type: a for a in run_artifacts(run_id)}
    assert found["bar-test"].data == 100.0 and found["bar-test"].description == "copy of a.b: 100%"
    assert found["table-test"].type == "table" and "passed" in str(found["table-test"].data)


def test_moves_after_a_write_update_it_and_a_failed_write_is_logged(prefect_api, caplog):
    @flow
    def steps() -> str:
        with artifacts.artifacts_written_behind():
            bar = artifacts.ProgressBar(0.0, "copy", key="bar-moves")
            artifacts._write("first", lambda: None)
        bar.move(40.0)  # outside the block: written on the spot
        artifacts.table("bad key!", [{"a": 1}], "refused by Prefect: keys are lowercase, digits and dashes")
        return str(flow_run.get_id())

    with caplog.at_level(logging.WARNING, logger="mongo_migrate.artifacts"):
        run_id = steps()
    found = {a.key: a for a in run_artifacts(run_id)}
    assert found["bar-moves"].data == 40.0 and "bad key!" not in found
    assert any("the bad key! artifact was not written" in r.getMessage() for r in caplog.records)


def test_a_bar_for_each_collection_still_copying_at_the_first_tick(prefect_api, spec_for, dst_client, monkeypatch):
    """flows/progress.py CopyProgress: the overall bar from the start; a collection's own bar only when
    it is still being copied at the first tick (10 s; 0.5 s here), moved to 100 at its end."""
    monkeypatch.setattr(progress, "COLLECTION_BARS_EVERY_S", 0.5)
    spec = spec_for(objects=[{"database": "bars"}])
    quick, long = (CollectionPlan(source_db="bars", source_name=name, target_db="bars", target_name=name,
                                  kind="collection") for name in ("quick", "long"))
    ranges = [CopyRange(plan=quick, estimated_docs=10), CopyRange(plan=long, estimated_docs=100)]
    dst_client.bars.long.insert_many([{"n": i} for i in range(40)])  # 40 of about 100 at the tick
    moves: list[tuple[float, str]] = []
    real_move = artifacts.ProgressBar.move
    monkeypatch.setattr(artifacts.ProgressBar, "move",
                        lambda self, percent, description=None: (moves.append((percent, self.description)),
                                                                 real_move(self, percent, description))[1])

    @flow
    def copy() -> str:
        with artifacts.artifacts_written_behind():
            bars = progress.CopyProgress(spec, ranges)
            bars.range_finished("bars.quick")
            bars.update()  # before the tick: the quick one is done, no collection bar yet
            time.sleep(0.6)
            bars.update()  # the tick: a bar for the one still being copied, at 40%
            bars.range_finished("bars.long")
            bars.update()  # its end
        return str(flow_run.get_id())

    run_id = copy()
    found = run_artifacts(run_id)
    collection_bars = [a for a in found if a.type == "progress" and a.key is None]
    assert [(a.data, a.description) for a in collection_bars] == [
        (100.0, "Full copy of bars.long -> bars.long (about 100 documents)")]
    assert [m for m in moves if m[1].startswith("Full copy of")] == [
        (100.0, "Full copy of bars.long -> bars.long (about 100 documents)")]  # created at 40, then one move
    overall = [a for a in found if a.key == progress.FULL_COPY_KEY]
    assert overall and overall[0].data == 100.0
