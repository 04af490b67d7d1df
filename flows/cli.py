"""`mongo-migrate`: run, precheck, verify, approve, status, throttle and demo from a terminal.

Exit codes: 0 success, 1 the migration failed, 2 bad input or a failed precheck, 3 verify found
differences; an error's code comes from its type (blocks/errors.py).
"""
from __future__ import annotations

import argparse
import atexit
import importlib
import json
import logging
import os
import sys
import threading
import time
from typing import Sequence

_STARTED = time.monotonic()  # the command's own clock: Prefect's start-up is part of what a user waits

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
EXIT_DIFFERENT = 3  # `verify`: the destination is not equal to the source


def _quiet_tracebacks() -> None:
    """Console log lines keep their message but not the traceback (the Prefect UI still has it)."""
    # Prefect configures logging lazily, at the first flow run: configure it now, so that its
    # console handlers exist to be trimmed
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()

    class OneLine(logging.Formatter):
        def __init__(self, inner: logging.Formatter | None) -> None:
            super().__init__()
            self.inner = inner or logging.Formatter()

        def format(self, record: logging.LogRecord) -> str:
            saved = record.exc_info, record.exc_text, record.stack_info
            record.exc_info = record.exc_text = record.stack_info = None
            try:
                return self.inner.format(record)
            finally:
                record.exc_info, record.exc_text, record.stack_info = saved

    loggers = [logging.getLogger()] + [
        logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
        if name.startswith("prefect")
    ]
    for lg in loggers:
        for h in lg.handlers:
            if isinstance(h, logging.StreamHandler) and not isinstance(h.formatter, OneLine):
                h.setFormatter(OneLine(h.formatter))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mongo-migrate", description=__doc__.splitlines()[0])
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--verbose", action="store_true",
                   help="Prefect's log lines on the terminal (else in a log file, and progress drawn instead)")
    # subcommands take --debug too; SUPPRESS keeps their unset default from hiding `--debug run ...`
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (("run", "precheck, then migrate"), ("precheck", "only the precheck"),
                        ("verify", "compare the destination with the source")):
        c = sub.add_parser(name, help=help_)
        c.add_argument("spec", help="migration spec, YAML or JSON")
        c.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        c.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
        c.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="Prefect's log lines on the terminal (else in a log file)")
    sub.choices["verify"].add_argument(
        "--recheck-delay", type=float, default=None, metavar="SECONDS",
        help="wait this long before reading differing ranges again (default 5)")
    a = sub.add_parser("approve", help="approve the cutover of a run waiting for it (incremental)")
    a.add_argument("run_id", nargs="?", help="the waiting flow run (or its migrate run); "
                   "omitted: the one run waiting")
    a.add_argument("--note", default="", help="who approves and why, kept in the run's report")
    a.add_argument("--reject", action="store_true",
                   help="decline: end the sync without cutover (running the spec again continues it)")
    a.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    st = sub.add_parser("status", help="where a migration of this spec stands (from any machine)")
    st.add_argument("spec", help="migration spec, YAML or JSON")
    st.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    st.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    t = sub.add_parser("throttle", help="show or change the load cap of this spec's migration, also while "
                       "it runs (within 2 s, on every worker)")
    t.add_argument("spec", help="migration spec, YAML or JSON")
    for option, what in (("--docs-per-s", "the full copy's documents read per second"),
                         ("--mb-per-s", "the full copy's MB (10^6 bytes) read per second"),
                         ("--sync-docs-per-s", "the incremental sync's documents written per second"),
                         ("--sync-mb-per-s", "the incremental sync's MB written per second")):
        t.add_argument(option, metavar="N", help=f"cap {what}; the other caps stay as they are")
    how = t.add_mutually_exclusive_group()
    how.add_argument("--off", action="store_true", help="no cap at all, windows included, until changed")
    how.add_argument("--reset", action="store_true", help="forget the live cap: the spec's caps and windows again")
    t.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    d = sub.add_parser("demo", help="migrate sample data between two local mongods")
    d.add_argument("--dir", default=".demo", help="where the demo keeps its mongods and Prefect data")
    d.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return p


def _error(message: str) -> None:
    print(f"mongo-migrate: error: {message}", file=sys.stderr)


def format_precheck(report) -> str:
    mark = {"passed": "ok  ", "warning": "WARN", "failed": "FAIL"}
    width = max((len(i.name) for i in report.items), default=10)
    lines = []
    for i in report.items:
        lines.append(f"{mark[i.status]}  {i.name:<{width}}  {i.detail}")
        if i.remedy and i.status != "passed":
            lines.append(f"      {'':<{width}}  -> {i.remedy}")
    lines.append("precheck " + ("passed" if report.passed else "FAILED"))
    return "\n".join(lines)


def format_summary(s) -> str:
    lines = [
        f"migrated {s.source} -> {s.destination}" + (" (resumed)" if s.resumed else ""),
        f"{'source':<40} {'target':<40} {'documents':>12} {'indexes':>7}",
    ]
    for c in s.collections:
        # time-series data travels (and is counted) as bucket documents, not measurements
        unit = " (buckets)" if c.kind == "timeseries" else ""
        lines.append(f"{c.source_ns:<40} {c.target_ns:<40} {c.target_docs:>12,} {c.indexes:>7}{unit}")
    for v in s.views:
        lines.append(f"{'(view)':<40} {v:<40}")
    lines.append(
        f"{s.docs:,} documents, {s.bytes / 1e6:,.1f} MB in {s.copy_seconds:.1f}s copy "
        f"({s.docs_per_s:,.0f} docs/s), {s.seconds:.1f}s in all; counts "
        + ("match" if s.counts_match else "DIFFER")
    )
    if s.phases:
        lines.append("steps: " + ", ".join(f"{name} {sec:.1f}s" for name, sec in s.phases.items())
                     + f"; whole command {time.monotonic() - _STARTED:.1f}s")
    skipped = sum(getattr(c, "skipped", 0) for c in s.collections)
    if skipped:
        lines.append(f"{skipped:,} documents the destination refused were skipped "
                     "(on_document_error: skip); see mongo_migrate_meta.skipped_documents")
    if getattr(s, "sync", None) is not None:
        lines.append("incremental sync: " + s.sync.describe())
    return "\n".join(lines)


def _read_spec(path: str):
    """The spec, or None once its problem is told in one line."""
    from mongo_migrate.blocks.spec import SpecError, load_spec

    try:
        return load_spec(path)
    except SpecError as exc:
        _error(str(exc))
        return None


def _set_up_logging(args) -> None:
    # Prefect sets its logging up when prefect.main is imported (by `from prefect import flow`, as the
    # flows do), and again there if it was set up before: imported first, it is set up once, then trimmed
    import prefect.main  # noqa: F401

    if not args.debug:
        _quiet_tracebacks()


def _run(args) -> int:
    from mongo_migrate.flows.temporary_server import start_early, use_or_stop

    # booting while this process imports and reads the spec (flows/temporary_server.py)
    server = start_early()
    spec = _read_spec(args.spec)
    if spec is None:
        return EXIT_BAD_INPUT
    _set_up_logging(args)
    if not args.verbose:
        from mongo_migrate.flows.log_files import log_file_for
        from mongo_migrate.flows.terminal import send_info_to_file

        log_path = log_file_for(args.command)
        send_info_to_file(log_path)
        print(f"mongo-migrate: log: {log_path} (--verbose: on the terminal)", file=sys.stderr, flush=True)
    # the flows' own imports while the server boots, not after
    import mongo_migrate.flows.migrate  # noqa: F401
    import mongo_migrate.flows.verify  # noqa: F401

    _import_what_a_flow_run_imports()

    _heartbeat_not_awaited()
    try:
        api = use_or_stop(server)
    except RuntimeError as exc:
        _error(str(exc))
        return EXIT_FAILED
    with api:
        return _run_command(spec, args)


# Modules Prefect imports only as the first flow run starts: the flow's graph visualisation, pydantic v1
# (parameter validation), the task engine, anyio's asyncio backend. After the temporary server answers,
# on the command's critical path, they cost it ~0.1 s; imported while the server boots, nothing.
FIRST_RUN_IMPORTS = ("prefect.utilities.visualization", "pydantic.v1", "prefect.task_engine",
                     "anyio._backends._asyncio")


def _import_what_a_flow_run_imports() -> None:
    for name in FIRST_RUN_IMPORTS:
        try:
            importlib.import_module(name)
        except ImportError:  # another Prefect's, anyio's or pydantic's layout: imported when needed
            pass


def _heartbeat_not_awaited() -> None:
    """A flow run's heartbeat thread (Prefect's, one heartbeat per PREFECT_FLOWS_HEARTBEAT_FREQUENCY)
    sleeps in steps of 1 s, and a sync flow run waits for it to notice the run has ended: up to 1 s
    after every run, 0.75 s measured at the end of a 6 s command. This command ends its process right
    after its run, so the run does not wait for the thread, as Prefect's async flow runs do not
    (`join_on_exit=False`). Heartbeats are sent as before while the run lasts; the thread looks at
    its stop flag, then at the run's state, before each one, so none is sent after the run's end."""
    import functools
    import inspect

    from prefect import flow_engine

    send = getattr(flow_engine, "_send_heartbeats", None)
    try:
        takes_it = send is not None and "join_on_exit" in inspect.signature(send).parameters
    except (TypeError, ValueError):
        takes_it = False
    if takes_it and not isinstance(send, functools.partial):
        flow_engine._send_heartbeats = functools.partial(send, join_on_exit=False)


def _run_command(spec, args) -> int:
    from mongo_migrate.blocks.errors import BadInput, PrecheckFailed

    if args.command == "verify":
        return _verify(spec, args)
    from mongo_migrate.flows.migrate import precheck

    try:
        if args.command == "precheck":
            outcome = precheck(spec)
            report = outcome.report
            if args.json:
                print(json.dumps({"passed": report.passed, "items": [i.model_dump() for i in report.items]}))
            else:
                print(format_precheck(report))
            return EXIT_OK if report.passed else EXIT_BAD_INPUT
        if spec.incremental and sys.stdin.isatty():
            from mongo_migrate.flows.approval import add_approval_listener

            add_approval_listener(_approval_prompt)
        summary = _migrate_showing_progress(spec, args)
    except PrecheckFailed as exc:
        if args.json:
            print(json.dumps({"status": "precheck_failed", "passed": False,
                              "items": [i.model_dump() for i in exc.report.items]}))
        else:
            print(format_precheck(exc.report))
        _error("precheck failed; nothing was written: " + ", ".join(i.name for i in exc.report.failed))
        return exc.exit_code
    except BadInput as exc:  # e.g. a MongoEndpoint block that is not saved
        _error(str(exc))
        return exc.exit_code
    except Exception as exc:  # the flow's failure, reported in one line (blocks/errors.py: exit codes)
        if args.debug:
            raise
        _error(f"migration failed: {one_line(exc)}")
        return getattr(exc, "exit_code", EXIT_FAILED)
    if summary.sync is not None and summary.sync.status != "cut_over":
        # no cutover: approval timed out or was declined; the sync position is saved
        if args.json:
            print(json.dumps({"status": summary.sync.status, **summary.model_dump(mode="json")}))
        _error(summary.sync.describe())
        return EXIT_FAILED
    if args.json:
        print(json.dumps({"status": "completed", **summary.model_dump(mode="json"),
                          "docs_per_s": round(summary.docs_per_s, 1),
                          "command_seconds": round(time.monotonic() - _STARTED, 3)}))
    else:
        print(format_summary(summary))
    return EXIT_OK


def _migrate_showing_progress(spec, args):
    from mongo_migrate.flows.migrate import migrate

    if args.verbose:
        return migrate(spec)
    from mongo_migrate.flows.progress import add_progress_watcher, remove_progress_watcher
    from mongo_migrate.flows.terminal import TerminalProgress

    display = TerminalProgress()
    add_progress_watcher(display)
    try:
        return migrate(spec)
    finally:
        remove_progress_watcher(display)
        display.close()


def _approval_prompt(run_id: str, delay: float | None) -> None:
    """`run` in a terminal: ask for cutover approval on stdin, in a thread of its own (the flow waits in
    its pause meanwhile, and the Prefect UI or `mongo-migrate approve` still work)."""

    def ask() -> None:
        from mongo_migrate.flows.approval import approve_cutover

        # on stderr, with the log: stdout stays the summary (one JSON object with --json)
        print(f"\nReady for cutover (flow run {run_id}). Approve now? "
              "[y]es / [n]o: end the sync without cutover / Enter: keep waiting", file=sys.stderr, flush=True)
        answer = sys.stdin.readline().strip().lower()
        if answer not in ("y", "yes", "n", "no"):
            print("still waiting for approval: Prefect UI, or mongo-migrate approve", file=sys.stderr, flush=True)
            return
        print("Note (optional):", file=sys.stderr, flush=True)
        note = sys.stdin.readline().strip()
        approve = answer.startswith("y")
        try:
            approve_cutover(run_id, approve=approve, note=note)
        except Exception as exc:  # noqa: BLE001 - e.g. approved in the UI meanwhile
            _error(f"could not answer the approval: {one_line(exc)}")
            return
        print("cutover approved" if approve else "cutover declined", file=sys.stderr, flush=True)

    threading.Thread(target=ask, daemon=True, name="approval-prompt").start()


def _approve(args) -> int:
    _set_up_logging(args)
    from prefect.settings import get_current_settings

    from mongo_migrate.flows.approval import approve_cutover

    if not get_current_settings().api.url:
        # without a server each process would start a temporary one of its own, which knows no run
        _error("no Prefect server is configured (PREFECT_API_URL): answer the prompt in the terminal "
               "running the migration, or run it against a Prefect server and set PREFECT_API_URL here")
        return EXIT_BAD_INPUT
    run, code = _attempt(args, lambda: approve_cutover(args.run_id, approve=not args.reject, note=args.note),
                         "could not answer the approval through the Prefect API")
    if run is None:
        return code
    print(f"cutover {'declined' if args.reject else 'approved'}: flow run {run.name} ({run.id})")
    return EXIT_OK


def _status(args) -> int:
    """Reads the destination, the source and the Prefect API PREFECT_API_URL names; never starts a
    temporary Prefect server (it would know no run)."""
    spec = _read_spec(args.spec)
    if spec is None:
        return EXIT_BAD_INPUT
    _set_up_logging(args)
    from mongo_migrate.flows.status import read_status, status_text

    status, code = _attempt(args, lambda: read_status(spec),
                            "cannot read the migration's state on the destination")
    if status is None:
        return code
    print(status.model_dump_json() if args.json else status_text(status))
    return EXIT_OK


THROTTLE_OPTIONS = {"docs_per_s": "--docs-per-s", "mb_per_s": "--mb-per-s",
                    "sync_docs_per_s": "--sync-docs-per-s", "sync_mb_per_s": "--sync-mb-per-s"}


def _throttle(args) -> int:
    """Writes the live cap on the destination (mongo_migrate_meta.throttle), where every process of
    the run reads it once a second; without options, shows the cap that applies now."""
    from pydantic import ValidationError

    from mongo_migrate.blocks.spec import Caps

    spec = _read_spec(args.spec)
    if spec is None:
        return EXIT_BAD_INPUT
    given = {key: getattr(args, key) for key in THROTTLE_OPTIONS if getattr(args, key) is not None}
    if given and (args.off or args.reset):
        _error(f"{THROTTLE_OPTIONS[next(iter(given))]} goes without --off and --reset")
        return EXIT_BAD_INPUT
    try:
        Caps.model_validate(given)
    except ValidationError as exc:
        err = exc.errors()[0]
        _error(f"{THROTTLE_OPTIONS[err['loc'][0]]}: {err['msg'].lower()} (documents or MB per second)")
        return EXIT_BAD_INPUT
    _set_up_logging(args)
    from mongo_migrate.flows.status import throttle_text
    from mongo_migrate.tasks.throttle import change_live_cap

    caps, code = _attempt(args, lambda: change_live_cap(spec, given, off=args.off, reset=args.reset,
                                                        by="mongo-migrate throttle"),
                          "cannot change the load cap on the destination")
    if caps is None:
        return code
    print(throttle_text(caps))
    return EXIT_OK


def _attempt(args, action, failure: str):
    """(action's result, None), or (None, exit code) once its error is told in one line: a BadInput
    as it is (exit 2), anything else as "<failure>: ..." (exit 1; --debug raises it, traceback and all)."""
    from mongo_migrate.blocks.errors import BadInput

    try:
        return action(), None
    except BadInput as exc:
        _error(str(exc))
        return None, exc.exit_code
    except Exception as exc:
        if args.debug:
            raise
        _error(f"{failure}: {one_line(exc)}")
        return None, EXIT_FAILED


def one_line(exc: BaseException) -> str:
    from pymongo.errors import PyMongoError

    if isinstance(exc, PyMongoError):
        from mongo_migrate.tasks.connect import describe_connection_error

        return describe_connection_error(exc, type(exc).__name__)[1]
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:500]


def _verify(spec, args) -> int:
    from mongo_migrate.blocks.errors import BadInput
    from mongo_migrate.flows.verify import verification_text, verify
    from mongo_migrate.tasks.verify import RECHECK_DELAY_S

    delay = RECHECK_DELAY_S if args.recheck_delay is None else args.recheck_delay
    try:
        report = verify(spec, recheck_delay_s=delay)
    except BadInput as exc:
        _error(f"cannot verify: {exc}")
        return exc.exit_code
    except Exception as exc:
        if args.debug:
            raise
        _error(f"verification failed: {one_line(exc)}")
        return EXIT_FAILED
    if args.json:
        print(json.dumps({"status": "equal" if report.equal else "different", **report.model_dump(mode="json")}))
    else:
        print(verification_text(report))
    return EXIT_OK if report.equal else EXIT_DIFFERENT


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    args = _parser().parse_args(argv)
    try:
        if args.command in ("run", "precheck", "verify"):
            return _run(args)
        if args.command == "approve":
            return _approve(args)
        if args.command == "status":
            return _status(args)
        if args.command == "throttle":
            return _throttle(args)
        if args.command == "demo":
            from mongo_migrate.sandbox.demo import run_demo

            return run_demo(args.dir)
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    return EXIT_BAD_INPUT


def console_main() -> None:
    """The `mongo-migrate` command (and `python -m mongo_migrate.flows.cli`): main(), then the process
    ends as soon as the exit handlers have run (Prefect's log and event workers flush there, a temporary
    Prefect server stops there), without the interpreter's teardown of every module and object it
    loaded: after a run that teardown took 0.4-1 s here, longer than a small migration's copy."""
    exit_code = [EXIT_FAILED]  # an exception that escapes main() has printed its traceback by then

    def end_now() -> None:
        logging.shutdown()  # its own exit handler would run after this one
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(exit_code[0])

    # registered first, so it runs last: exit handlers run in the reverse order of registration
    atexit.register(end_now)
    try:
        exit_code[0] = main()
    except SystemExit as exc:  # argparse: --help, a bad argument
        exit_code[0] = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_FAILED)
        raise
    finally:
        _no_monitor_joins_at_exit()
    sys.exit(exit_code[0])


def _no_monitor_joins_at_exit() -> None:
    """pymongo's exit handler stops the threads that monitor each server and joins them, so that none
    is running in the interpreter's teardown; each looks at its stop flag every 0.5 s, and the command
    waited 0.13-0.45 s for them after every run here. This process has no teardown (console_main's
    end_now): its threads end with it, the migration's writes having been acknowledged long before."""
    for name in ("pymongo.synchronous.monitor", "pymongo.asynchronous.monitor", "pymongo.monitor"):
        handler = getattr(sys.modules.get(name), "_shutdown_resources", None)
        if handler is not None:
            atexit.unregister(handler)


if __name__ == "__main__":
    console_main()
