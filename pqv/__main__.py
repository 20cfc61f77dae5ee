import sys

from .common import warmstart
from .plan.warm import SERVE

if sys.argv[1:2] == [SERVE]:  # a local run's warm-start server (pqv.plan.warm starts it)
    from .cli import main

    warm_job = warmstart.serve(sys.argv[2])  # returns in each job's process, forked from the server
    sys.exit(main(warm_job.argv))
status = warmstart.run_in_server(sys.argv[1:])  # None: no server, or a command that runs cold
if status is None:
    from .cli import main

    status = main()
sys.exit(status)
