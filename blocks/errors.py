"""Every error mongo-migrate raises on purpose, and the exit code `mongo-migrate` gives for it.

Each message is one line that says what happened and what to do. `BadInput` (exit 2) is a problem the
user fixes before running again: the spec, a failed precheck, no run to approve or report on.
`MigrationFailed` (exit 1) is a migration that could not finish; running the same spec again resumes it
unless the message says otherwise. Anything else that escapes is unexpected, also exit 1.

This module sits with the blocks, the lowest layer, so that every layer can raise these.
"""
from __future__ import annotations

from typing import Any


class MigrationError(Exception):
    """Base of mongo-migrate's own errors."""

    exit_code = 1


class BadInput(MigrationError):
    """Something the user fixes before running again."""

    exit_code = 2


class MigrationFailed(MigrationError):
    """The migration could not finish."""

    exit_code = 1


# -- bad input ------------------------------------------------------------------------------------------
class SpecError(BadInput, ValueError):
    """The spec (or its file) is not valid; the message says what to fix, in one line."""


class PrecheckFailed(BadInput):
    """The precheck failed: nothing was written."""

    def __init__(self, report: Any) -> None:
        self.report = report  # tasks.precheck.PrecheckReport
        names = ", ".join(f"{i.name} ({i.detail})" for i in report.failed)
        super().__init__(f"precheck failed: {names}")

    def __reduce__(self):
        # pickled where a failed state's exception is persisted (results stored by the Prefect settings)
        return type(self), (self.report,)


class VerificationUnavailable(BadInput):
    """Verification could not start (an endpoint unreachable, a selected object missing)."""


class ApprovalError(BadInput):
    """No run, or more than one, waits for approval; the message says what to do."""


class NoRunError(BadInput, LookupError):
    """The destination holds no run of this spec."""


class RunnerUnavailable(BadInput):
    """copy_options.runner cannot start where the flow runs (prefect-dask missing, no Prefect API the
    Dask workers can report to, a Dask scheduler that cannot be reached); the message says what to do."""


class DeployError(BadInput):
    """A deployment setting is wrong; the message says which, in one line."""


# -- the migration could not finish ---------------------------------------------------------------
class DocumentWriteError(MigrationFailed):
    """A document the destination refused for another reason than being there already."""

    def __init__(self, target_ns: str, doc_id: object, code: int, message: str) -> None:
        self.target_ns, self.doc_id, self.code, self.message = target_ns, doc_id, code, message
        super().__init__(f"{target_ns}: document _id={doc_id!r} was refused (code {code}): {message}")

    def __reduce__(self):
        # raised in a range task on a Dask worker, it is pickled back to the flow's process
        return type(self), (self.target_ns, self.doc_id, self.code, self.message)


class ChangeApplyError(MigrationFailed):
    """The destination refused a change for another reason than a passing unique-key conflict."""


class OplogWindowExceeded(MigrationFailed):
    """The sync's position left the source's oplog: only a new full migration can continue."""

    def __init__(self, detail: str = "") -> None:
        self.detail = detail
        super().__init__(
            "the sync position is no longer in the source's oplog (the oplog window was exceeded"
            + (f": {detail}" if detail else "")
            + "); run the full migration again (drop the target collections or set "
            "copy_options.drop_existing_targets: true) and give the source a bigger oplog"
        )

    def __reduce__(self):
        return type(self), (self.detail,)


class UniqueConversionFailed(MigrationFailed):
    """Documents on the destination share a key of an index that is unique on the source."""


class CutoverVerificationFailed(MigrationFailed):
    """The counts or sampled documents differ after the drain."""


class VerificationDiffers(MigrationFailed):
    """The last verification of a migration found differences."""


class ServerDownloadError(MigrationFailed):
    """A MongoDB server wheel (sandbox/servers.py) could not be downloaded or did not hold what was
    expected."""
