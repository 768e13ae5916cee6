"""The report: tables, figures and REPORT.md as pure functions of ``results/raw/*.csv`` and
``results/hardware/*.json`` (plus the seed's quoted claims in ``claims.json``). Entry point:
:func:`artifact.report.build.build_report`."""
