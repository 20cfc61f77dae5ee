"""`python -m pqv`: a job's process. It hands the job to the run's warm-start server where there is
one (pqv.common.warmstart), or runs it here; and it is the server itself when pqv.plan.warm starts it."""

import atexit
import os
import sys
import threading

from .common import warmstart
from .plan.warm import SERVE


def _leave(status: int | None) -> None:
    """End the job without tearing the interpreter down. Python's own exit joins the threads left
    running, runs the atexit handlers (logging's flush, multiprocessing's clean-up, weakref
    finalizers) and then frees every object: with torch and timm loaded, that last part takes
    1.3-1.6 s of every job on a 2-vCPU EPYC, more than most demo jobs compute, and nothing of ours
    waits for it (every file is closed where it is written). The first two are done here."""
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # the handlers Python's exit would run (no public API runs them)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status or 0)


if sys.argv[1:2] == [SERVE]:  # a local run's warm-start server (pqv.plan.warm says where)
    from .cli import main

    warm_job = warmstart.serve(sys.argv[2])  # returns in each job's process, forked from the server
    _leave(main(warm_job.argv))
status = warmstart.run_in_server(sys.argv[1:])  # None: no server, or a command that runs cold
if status is not None:
    sys.exit(status)
from .cli import main  # noqa: E402

_leave(main())
