"""Metrics of the robustness protocols: top-k accuracy, and OOD detection scored with the maximum softmax.

OOD detection follows Hendrycks et al. (ImageNet-O): the anomaly score is the negative maximum softmax
probability, OOD images are the POSITIVE class, and the reported numbers are AUPR (sklearn average precision),
AUROC and FPR@95 (the false-positive rate, on in-distribution images, at the first threshold that flags at
least 95% of the OOD images). All are percentages.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

__all__ = ["topk_correct", "max_softmax_anomaly_score", "ood_detection_metrics"]


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, int]:
    """Number of rows whose target is among the k largest logits, for each k (k capped at the class count)."""
    ranked = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = ranked == targets.view(-1, 1)
    return {k: int(hits[:, :k].any(dim=1).sum()) for k in ks}


def max_softmax_anomaly_score(logits: torch.Tensor) -> torch.Tensor:
    """Higher = more anomalous: minus the largest class probability."""
    return -logits.float().softmax(dim=1).amax(dim=1)


def ood_detection_metrics(scores: np.ndarray, is_ood: np.ndarray) -> dict[str, float]:
    """AUPR, AUROC and FPR@95 in percent, with OOD as the positive class and higher score = more anomalous."""
    scores = np.asarray(scores, dtype=np.float64)
    is_ood = np.asarray(is_ood, dtype=bool)
    if is_ood.all() or not is_ood.any():
        raise ValueError("OOD detection needs both in-distribution and OOD images")
    fpr, tpr, _ = roc_curve(is_ood, scores, drop_intermediate=False)
    return {"aupr": 100.0 * float(average_precision_score(is_ood, scores)),
            "auroc": 100.0 * float(roc_auc_score(is_ood, scores)),
            "fpr95": 100.0 * float(fpr[np.searchsorted(tpr, 0.95, side="left")])}
