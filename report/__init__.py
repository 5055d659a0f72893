"""The generalisation report (paper Table 4): reads the result files every stage writes and renders one table
and one figure. ``python -m report --results runs/ --out report/``.

It reads files, never models' code paths: it imports only :mod:`genas.core`, :mod:`genas.plots` and
:mod:`genas.cost` (plus timm, to size a registered model)."""
