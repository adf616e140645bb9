"""Top-1 / top-5 accuracy as an ``evaluate.Metric`` (the Hub's ``accuracy`` metric needs a download and has no top-k).

The Trainer reduces logits to the top-k class ids on the device (``preprocess_logits_for_metrics``), so only
(N, k) integers are gathered, not (N, num_classes) floats.
"""

from __future__ import annotations

from typing import Optional, Sequence

import datasets
import evaluate
import numpy as np
import torch


class TopKAccuracy(evaluate.Metric):
    """Fraction of samples whose label is among the first k predicted class ids (ids sorted by score)."""

    def _info(self):
        return evaluate.MetricInfo(
            description="Top-k accuracy from ranked class ids.",
            citation="",
            inputs_description="predictions: (N, k) class ids ranked by score; references: (N,) labels.",
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("int64")),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, ks: Sequence[int] = (1, 5)):
        ranked, labels = np.asarray(predictions), np.asarray(references)
        return {f"top{k}": float((ranked[:, :k] == labels[:, None]).any(axis=1).mean()) for k in ks}


def topk_ids(logits, labels=None, k: int = 5) -> torch.Tensor:
    """``preprocess_logits_for_metrics``: (..., K) logits -> (..., min(k, K)) class ids ranked by score."""
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    return logits.topk(min(k, logits.shape[-1]), dim=-1).indices


def reported_ks(num_labels: Optional[int], ks: Sequence[int] = (1, 5)) -> tuple[int, ...]:
    """The top-k accuracies worth reporting: top-1 always, top-k only for k < the number of classes (with 5 classes
    or fewer every label is in the top 5: top-5 would read 1.0 whatever the model)."""
    return tuple(k for k in ks if k == 1 or num_labels is None or k < num_labels)


class ClassificationMetrics:
    """``compute_metrics`` for one head (predictions (N, k)) or several (predictions (N, H, k), head 0 first).

    Head 0 (the exported model) is reported as ``top1``/``top5``; head h > 0 as ``{name}_top1``/``{name}_top5``.
    ``top5`` only with more than 5 classes (``reported_ks``).
    """

    def __init__(self, head_names: Sequence[str] = ("student",), num_labels: Optional[int] = None):
        self.head_names = list(head_names)
        self.ks = reported_ks(num_labels)
        self.metric = TopKAccuracy()

    def __call__(self, eval_pred) -> dict:
        preds, labels = eval_pred.predictions, eval_pred.label_ids
        if isinstance(preds, (tuple, list)):
            preds = preds[0]
        preds = np.asarray(preds)
        heads = preds[:, None] if preds.ndim == 2 else preds
        out = {}
        for h in range(heads.shape[1]):
            scores = self.metric.compute(predictions=heads[:, h], references=labels, ks=self.ks)
            prefix = "" if h == 0 else f"{self.head_names[h] if h < len(self.head_names) else h}_"
            out.update({prefix + k: v for k, v in scores.items()})
        return out
