"""The whole downstream benchmark from one manifest: models x named evaluations, resumable, locally or on SLURM.

    python -m suite run configs/suite/table4.yaml --data-root /data
    python -m suite run configs/suite/table4.yaml --launcher slurm --partition gpu [--submit]
    python -m suite status configs/suite/table4.yaml
    python -m report --results runs/suite/table4 --out report/

A *cell* is (model, evaluation, hash of its resolved settings). It runs the project's existing command line
(``robustness/eval.py``, ``detection/train_net.py``, ``segmentation/train.py`` + ``test.py``) in a fresh
subprocess and leaves ``<out>/<model>/<evaluation>.json`` (the ``genas.core.results`` schema the report reads)
and ``<out>/<model>/<evaluation>.log``. Modules: :mod:`suite.manifest` (schema, validation, models),
:mod:`suite.evaluations` (the named evaluations and their command lines), :mod:`suite.cells` (hash, state, running
one cell), :mod:`suite.launchers` (local GPU/CPU scheduling, SLURM job arrays through submitit), :mod:`suite.cli`.
"""
