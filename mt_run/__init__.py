"""Orchestration: how the platform drives Dagster runs. One home for what the assets, `mt run` and the CLI share.

* ``runs``: the run tags, the stages, one run per partition (``claim_partition``), runs whose process is gone
  (``reconcile_dead_runs``), and a failed run's cause in one line (``failure_info``);
* ``plan``: what is missing or stale, stage by stage;
* ``runner``: ``mt run``'s launcher (inline runs in this process, or queued through the daemon);
* ``queue``: the Dagster daemon and webserver ``mt run`` starts, and run submission through Dagster's GraphQL client.

``runs`` imports nothing heavy at module level, so ``mt --help`` stays fast.
"""
