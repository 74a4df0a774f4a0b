"""`--jobs N` and `--scheduler ADDRESS`: where the decoding of capture files runs.

Local processes (concurrent.futures) or a Dask distributed cluster (its concurrent.futures
executor); either way the events come back merged, byte for byte what one process gives,
and the detectors run once, here, over the merged stream (wire/parallel.py).
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import click

from ..wire.parallel import Parallel, default_jobs

MAX_JOBS = 256      # processes; more is a typo, not a machine


def parallel_options(f):
    f = click.option(
        "--scheduler", metavar="ADDRESS",
        help="Decode on this Dask distributed scheduler (tcp://host:8786); the captures "
             "must be on a path its workers share. Needs the `dask` extra.")(f)
    f = click.option(
        "--jobs", "-j", type=click.IntRange(min=1, max=MAX_JOBS), metavar="N",
        help="Use N processes: capture files are decoded in N of them (sharded by TCP "
             "connection; several captures side by side), or in N-1 where this one runs "
             "the detectors (analyze, timeline); analyze and profile decode stdin (`-`) in "
             "a process of its own unless N is 1. Default: the machine's "
             "cores when the captures are large enough to gain, else 1. The output is the "
             "same for any N.")(f)
    return f


def decode_stdin_apart() -> bool:
    """Decode stdin in a process of its own: where there are two cores or more to run it
    beside this one (CORRELATE_STDIN_DECODER=thread|process decides, for tests)."""
    how = os.environ.get("CORRELATE_STDIN_DECODER")
    if how in ("thread", "process"):
        return how == "process"
    return len(os.sched_getaffinity(0)) > 1


def stdin_in_process(decoding: dict):
    """stdin decoded in a process beside this one (`analyze -`, `profile -`), opened as
    open_input would (a sources.Input): an input that is no capture is said now, in one
    line."""
    from ..sources import Input     # here: `decode` starts without the sources
    from ..sources.decoder_process import DecoderProcess
    decoder = DecoderProcess(decoding)
    return Input("stdin", decoder.opened(), decoder.events(), decoder.diag)


def _captures(paths) -> list[str]:
    return [p for p in paths if p != "-"]


@contextmanager
def parallel_for(paths, jobs: int | None, scheduler: str | None, *,
                 detecting: bool = False) -> Iterator[Parallel | None]:
    """The Parallel to hand open_input for these inputs, or None: decode here.

    `detecting`: this process runs the detectors over the merged events, as much work as
    the decoding, so it counts as one of the N jobs and N-1 processes decode. On 2 cores,
    `analyze --jobs 2` as one decoding process beside this one took 2.4-2.8 s on the
    110k-packet bench capture; as two (three busy processes on two cores) 3.3-3.5 s, no
    faster than one process alone."""
    files = _captures(paths)
    if scheduler:
        yield from _on_dask(scheduler, jobs, files)
        return
    n = jobs if jobs is not None else default_jobs(files)
    if n <= 1 or not files:
        yield None
        return
    import multiprocessing          # here: one process (the usual case) never pays for it
    from concurrent.futures import ProcessPoolExecutor
    # fork: the workers start at once with everything imported (plugins included)
    workers = max(1, n - 1) if detecting else n
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as executor:
        yield Parallel(executor, max(1, workers // len(files)))


def _on_dask(scheduler: str, jobs: int | None, files: list[str]):
    try:
        from distributed import Client
    except ImportError:
        raise click.UsageError("--scheduler needs Dask distributed: "
                               "pip install 'gluster-correlate[dask]'") from None
    try:
        client = Client(scheduler, timeout=10)
    except OSError as exc:
        raise click.UsageError(f"--scheduler {scheduler}: cannot connect ({exc})") from None
    try:
        n = jobs or max(1, sum(client.nthreads().values()))
        yield Parallel(client.get_executor(), max(1, n // max(1, len(files))), spool_beside=True)
    finally:
        client.close()
