"""Scoring sub-networks of a trained supernet: the formulas of the paper (formulas), weight perturbation and BN
recalibration (perturbation), and the per-candidate scorer the search calls (scorer)."""
