"""Metrics of the robustness protocols: top-k accuracy, calibration, OOD detection and ImageNet-C's CE / mCE.

Calibration: the expected calibration error (ECE) over 15 equal-width bins of the top-1 confidence, computed by
torchmetrics (``binary_calibration_error`` on (top-1 confidence, correct): what ``MulticlassCalibrationError(n_bins=15,
norm='l1')`` computes from the probabilities; a test checks the two agree and a hand-worked case), and the
mean negative log-likelihood (NLL) of the target class, in nats.

OOD detection follows Hendrycks et al. (ImageNet-O): the anomaly score is the negative maximum softmax
probability, OOD images are the POSITIVE class, and the reported numbers are AUPR (sklearn average precision),
AUROC and FPR@95 (the false-positive rate on in-distribution images at 95% recall of the OOD images). FPR@95
follows the reference ``calibration_tools.fpr_and_fdr_at_recall`` (hendrycks/natural-adv-examples): of the
thresholds down to the first that flags every OOD image, the one whose recall is closest to 0.95
(``argmin |recall - 0.95|``), and on a plateau of equal recall the LAST (lowest) threshold, the one with the most
false positives. All are percentages.

ImageNet-C (Hendrycks & Dietterich 2019): E_{s,c} is the top-1 error at severity s of corruption c; the corruption
error CE_c = sum_s E_{s,c} / sum_s E^AlexNet_{s,c}, the mCE is the mean CE over the 15 standard corruptions, and
the relative CE_c = sum_s (E_{s,c} - E_clean) / sum_s (E^AlexNet_{s,c} - E^AlexNet_clean). AlexNet's errors are
published figures (``robustness/data/imagenet_c_alexnet.yaml``, with their source).
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Mapping, Sequence

import numpy as np
import torch
import yaml
from sklearn.metrics import average_precision_score, roc_auc_score

__all__ = ["ECE_BINS", "topk_correct", "expected_calibration_error",
           "fpr_at_recall", "ood_detection_metrics", "alexnet_reference", "corruption_errors"]

ECE_BINS = 15


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, int]:
    """Number of rows whose target is among the k largest logits, for each k (k capped at the class count)."""
    hits = topk_hits(logits, targets, ks)
    return {k: int(v.sum()) for k, v in hits.items()}


def topk_hits(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, torch.Tensor]:
    """Per row: whether the target is among the k largest logits (bool tensors, one per k)."""
    ranked = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = ranked == targets.view(-1, 1)
    return {k: hits[:, :k].any(dim=1) for k in ks}


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE in percent: sum over equal-width bins of |accuracy - mean top-1 confidence| weighted by the bin's share
    of images (torchmetrics' ``binary_calibration_error`` with ``norm="l1"`` on (confidence, correct))."""
    from torchmetrics.functional.classification import binary_calibration_error

    confidence = torch.as_tensor(np.asarray(confidence, dtype=np.float32))
    if not len(confidence):
        raise ValueError("ECE needs at least one image")
    correct = torch.as_tensor(np.asarray(correct, dtype=bool)).long()
    return 100.0 * float(binary_calibration_error(confidence, correct, n_bins=n_bins, norm="l1"))


def fpr_at_recall(scores: np.ndarray, is_positive: np.ndarray, recall_level: float = 0.95) -> float:
    """FPR (percent) at the threshold whose recall is closest to ``recall_level``, the reference's rule (see the
    module docstring): the last threshold of a plateau of equal recall."""
    scores = np.asarray(scores, dtype=np.float64)
    is_positive = np.asarray(is_positive, dtype=bool)
    order = np.argsort(scores, kind="mergesort")[::-1]
    scores, is_positive = scores[order], is_positive[order]
    ends = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # last image of each distinct score
    tps = np.cumsum(is_positive, dtype=np.float64)[ends]
    fps = ends + 1 - tps
    stop = int(np.searchsorted(tps, tps[-1]))  # first threshold that flags every positive
    recall = tps[:stop + 1] / tps[-1]
    # argmin over the thresholds from the lowest (stop) up: ties go to the lowest threshold of a plateau
    cutoff = stop - int(np.argmin(np.abs(recall[::-1] - recall_level)))
    return 100.0 * float(fps[cutoff] / np.count_nonzero(~is_positive))


def ood_detection_metrics(scores: np.ndarray, is_ood: np.ndarray) -> dict[str, float]:
    """AUPR, AUROC and FPR@95 in percent, with OOD as the positive class and higher score = more anomalous."""
    scores = np.asarray(scores, dtype=np.float64)
    is_ood = np.asarray(is_ood, dtype=bool)
    if is_ood.all() or not is_ood.any():
        raise ValueError("OOD detection needs both in-distribution and OOD images")
    return {"aupr": 100.0 * float(average_precision_score(is_ood, scores)),
            "auroc": 100.0 * float(roc_auc_score(is_ood, scores)),
            "fpr95": fpr_at_recall(scores, is_ood, 0.95)}


@lru_cache(maxsize=None)
def alexnet_reference() -> dict:
    """AlexNet's published ImageNet-C errors (fractions): ``{'source', 'clean_error', 'mean_error_over_severities'}``."""
    text = resources.files("robustness").joinpath("data", "imagenet_c_alexnet.yaml").read_text("utf-8")
    return yaml.safe_load(text)


def corruption_errors(errors: Mapping[tuple[str, int], float], corruptions: Sequence[str],
                      clean_error: float | None = None) -> dict[str, float]:
    """CE, mCE and (with ``clean_error``) relative CE / mCE, all in percent, from top-1 errors in percent keyed by
    ``(corruption, severity)``.

    A corruption gets a CE only when all five severities were measured (the reference figures are averages over
    the five); ``mce`` / ``relative_mce`` only when all 15 standard corruptions have one.
    """
    ref = alexnet_reference()
    alex, alex_clean = ref["mean_error_over_severities"], 100.0 * ref["clean_error"]
    out: dict[str, float] = {}
    for c in corruptions:
        per_severity = [errors.get((c, s)) for s in range(1, 6)]
        if c not in alex or any(e is None for e in per_severity):
            continue
        mean_error = float(np.mean(per_severity))
        out[f"ce/{c}"] = 100.0 * mean_error / (100.0 * alex[c])
        if clean_error is not None:
            out[f"relative_ce/{c}"] = 100.0 * (mean_error - clean_error) / (100.0 * alex[c] - alex_clean)
    standard = list(alex)
    if all(f"ce/{c}" in out for c in standard):
        out["mce"] = float(np.mean([out[f"ce/{c}"] for c in standard]))
        if clean_error is not None:
            out["relative_mce"] = float(np.mean([out[f"relative_ce/{c}"] for c in standard]))
    return out
