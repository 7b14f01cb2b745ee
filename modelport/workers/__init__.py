"""Worker processes: one loaded model each, served over a Unix socket, isolated from the network,
the platform's files and every other process.

    protocol.py    the wire (HTTP over the Unix socket, NDJSON events) and WorkerSpec
    client.py      WorkerClient, the gateway's side
    main.py        the worker process entry point; server.py its HTTP handlers
    supervisor.py  WorkerSupervisor: start, health-check, restart with backoff, drain, stop
    sandbox.py     the one launcher of sandboxed processes (workers and trainers): plan, uid pool,
                   run directory, environment, start; `isolation: {network, files, processes}`
    isolation.py   inside the sandbox: namespaces, the new root, the uid switch, then the payload
"""
