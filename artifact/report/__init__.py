"""The report: tables, figures and REPORT.md as pure functions of ``results/raw/*.csv``, ``results/raw/*.json``
(step timelines, GPU checks) and ``results/hardware/*.json`` (plus the seed's quoted claims in ``claims.json``); it
plans and simulates nothing. Modules, bottom up: ``load`` (read and type the files), ``metrics`` (derived
quantities), ``tables`` (formatting, Markdown tables, captions), ``claims`` (the seed's claims, verdict rules and
checks), ``figures``, ``build`` (REPORT.md). Entry point: :func:`artifact.report.build.build_report`."""
