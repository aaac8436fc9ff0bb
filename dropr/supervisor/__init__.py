"""droprd, the angel: one supervisor process that forks the workers named in
``[workers]`` and keeps them healthy.

    states   the worker states operators see (standard library only)
    slots    one named worker's record and its restart policy
    arbiter  the supervisor's loop: spawn, kill, reap, murder, manage
    health   psutil and heartbeat verdicts on the living workers
    reload   what a reload may change, and what it takes
    status   the status file and the ``droprd status`` table
    control  how ``droprd`` commands reach the running supervisor
    daemon   double fork, and the flock-ed pidfile
    log      log lines that carry the process title and pid
    cli      the ``droprd`` command
"""
