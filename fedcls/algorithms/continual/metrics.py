"""Continual-learning metrics from the accuracy matrix, with Avalanche's definitions.

``matrix[i][j]``: accuracy on experience j's test set after the federation finished experience
i (the last row may be the current, unfinished experience). With i the last row:

    average_accuracy  accuracy on the test sets of experiences 0..i together (Avalanche's
                      stream accuracy: weighted by test-set size)
    forgetting        mean over j < i of matrix[j][j] - matrix[i][j] (Avalanche's
                      StreamForgetting: the current experience is not counted)
    bwt               mean over j < i of matrix[i][j] - matrix[j][j] (Avalanche's BWT = -forgetting)

Forgetting and BWT are computed by Avalanche's standalone Forgetting and BWT metrics.
"""

from __future__ import annotations

from avalanche.evaluation.metrics import BWT, Forgetting


def _mean_of(metric, matrix: list[list[float]]) -> float | None:
    last = len(matrix) - 1
    for j in range(last):
        metric.update(j, matrix[j][j], initial=True)
        metric.update(j, matrix[last][j])
    values = list(metric.result().values())
    return sum(values) / len(values) if values else None


def continual_metrics(matrix: list[list[float]], test_sizes: list[int]) -> dict:
    """average_accuracy, forgetting, bwt and the matrix itself (rows so far)."""
    last = matrix[-1][: len(matrix)]
    sizes = test_sizes[: len(matrix)]
    average = sum(a * n for a, n in zip(last, sizes)) / max(sum(sizes), 1)
    return {"average_accuracy": average, "forgetting": _mean_of(Forgetting(), matrix),
            "bwt": _mean_of(BWT(), matrix), "accuracy_matrix": [list(r) for r in matrix]}
