"""Helpers that test packages share (a test package imports only these and its own modules).

- `server`: a real `modelport serve` on loopback (`start_server`, `lean_server`, `start_lean`).
- `tenants`: workspaces with one user and API key per role, made through the REST API; uploads.
- `inference`: deployments over the REST API, the server's workers seen from outside.
- `cli`: the `modelport` command run in process against a live server, and what its user sees.
- `workers`: an event loop in a thread for supervisors and workers in the test process.
- `kms`: storage-failure injection, the AWS key provider on a loopback KMS server.
- `artifacts`: valid, broken and malicious model files for the scanner.
- `models`: where the bundled model files are installed.
- `pg`: PostgreSQL for the store tests.
- `waiting`: `wait_until`, a deadline on a condition instead of a sleep.
- `clock`: `ManualClock`, for code that takes an injectable clock.
- `reverse_order`: a plugin (`-p tests.support.reverse_order`) that runs the tests backwards.
- `cpu_report`: a plugin (`-p tests.support.cpu_report`) that reports the CPU each module costs.
"""
