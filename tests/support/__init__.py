"""Test support, one module per concern (imported as `support.<module>`; tests/ is on sys.path).

schema (test schemas and dual-write checks), workload (a concurrent application writer),
snapshots (pg_dump, catalog and state snapshots), cli (the CLI in or out of process),
sessions (polling and server backends), clusters (standbys, npm binaries), proxy (a stalling TCP proxy).
"""
