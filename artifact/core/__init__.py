"""The bottom layer: what every other part of the artifact speaks in, importing nothing above it.

- ``workload``: the per-token routing arrays a run walks (``Workload``);
- ``requests``: what a workload asks of the expert cache per layer-step (``Requests``, ``build_requests``);
- ``plan``: the LOAD / COMPUTE operations both executors run (``Plan``, ``PlanBuilder``, ``check_plan``);
- ``timeline``: when each operation ran; ``metrics``: the counts and times of one run;
- ``select``: the one "n smallest keys" selector every eviction decision goes through;
- ``errors``: ``Unrunnable`` (a configuration that cannot run, recorded with its reason) and ``FutureAccessError``.
"""
