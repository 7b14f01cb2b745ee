"""Worker processes: one loaded model each, served over a Unix socket, isolated from the network
and from the platform's files.

    protocol.py    the wire (HTTP over the Unix socket, NDJSON events) and WorkerSpec
    client.py      WorkerClient, the gateway's side
    main.py        the worker process entry point; server.py its HTTP handlers
    supervisor.py  WorkerSupervisor: start, health-check, restart with backoff, drain, stop
    isolation.py   network namespace, own uid, mount namespace; what this machine allows
"""
