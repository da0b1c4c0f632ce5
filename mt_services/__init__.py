"""The servers a cluster deployment talks to, started for real on this machine by the tests and by hand:
a Postgres server for the Dagster instance (``postgres``) and a Ray cluster for GPU steps (``ray``).
Each is a context manager that starts the server in a folder of its own and stops it on exit."""
