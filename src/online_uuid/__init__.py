"""online-uuid: convert integer primary keys and their foreign keys to UUID in a live PostgreSQL.

The public Python API lives in :mod:`online_uuid.api`; the CLI is a thin layer over it.
"""

__version__ = "0.1.0"
