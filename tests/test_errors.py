"""blocks/errors.py: every error of mongo-migrate's comes back whole from a pickle (cloudpickle, as Dask
sends a worker's error back and as Prefect persists a failed state's exception): same type, same text,
same fields."""
from __future__ import annotations

import inspect
import pickle

import cloudpickle

from mongo_migrate.blocks import errors
from mongo_migrate.tasks.precheck import PrecheckReport, failed, passed

# the arguments of the errors whose constructor takes more than a message
SAMPLE_ARGS = {
    errors.PrecheckFailed: (PrecheckReport(items=[passed("Source connectivity", "6.0.5"),
                                                  failed("Source version", "3.4 is too old", "upgrade to 4.2")]),),
    errors.DocumentWriteError: ("app.users", 150, 11000, "E11000 duplicate key"),
    errors.OplogWindowExceeded: ("position 1700000000 is before the oldest entry 1700000100",),
}


def test_every_error_comes_back_whole_from_a_pickle():
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass)
               if issubclass(c, errors.MigrationError) and c.__module__ == errors.__name__]
    assert errors.PrecheckFailed in classes and len(classes) >= 15
    for cls in classes:
        error = cls(*SAMPLE_ARGS.get(cls, (f"{cls.__name__}: what went wrong",)))
        back = pickle.loads(cloudpickle.dumps(error))
        assert type(back) is cls and str(back) == str(error), cls.__name__
        assert vars(back) == vars(error), cls.__name__
    back = pickle.loads(pickle.dumps(errors.PrecheckFailed(*SAMPLE_ARGS[errors.PrecheckFailed])))
    assert [i.name for i in back.report.failed] == ["Source version"]
    assert str(back) == "precheck failed: Source version (3.4 is too old)"
