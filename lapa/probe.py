"""Do the latent codes carry the action? A linear probe from a frame pair's codes (one-hot, k x V)
to the true direction of motion between the two frames, trained on some clips and scored on
others, against chance (always answering the most frequent direction of the training clips)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class ProbeResult:
    accuracy: float
    chance: float
    classes: int
    train_pairs: int
    test_pairs: int

    def as_dict(self) -> dict[str, float]:
        return {
            "probe_accuracy": self.accuracy,
            "probe_chance": self.chance,
            "probe_classes": self.classes,
            "probe_train_pairs": self.train_pairs,
            "probe_test_pairs": self.test_pairs,
        }


def direction_labels(displacements: np.ndarray, min_motion: float) -> np.ndarray:
    """The dominant axis and its sign of each displacement (N, D) as a class 0 .. 2D-1
    (axis 0 positive, axis 0 negative, axis 1 positive, ...); -1 where the motion is below ``min_motion``."""
    displacements = np.asarray(displacements, dtype=np.float64)
    axis = np.abs(displacements).argmax(axis=1)
    negative = displacements[np.arange(len(displacements)), axis] < 0
    labels = 2 * axis + negative.astype(np.int64)
    labels[np.linalg.norm(displacements, axis=1) < min_motion] = -1
    return labels


def one_hot_codes(codes: np.ndarray, codebook_size: int) -> torch.Tensor:
    """(N, k) codes -> (N, k * V) one-hot features."""
    codes = torch.as_tensor(np.asarray(codes), dtype=torch.long)
    return torch.nn.functional.one_hot(codes, codebook_size).flatten(1).float()


def linear_probe(
    train_codes: np.ndarray,
    train_labels: np.ndarray,
    test_codes: np.ndarray,
    test_labels: np.ndarray,
    codebook_size: int,
    steps: int = 300,
) -> ProbeResult:
    """Multinomial logistic regression (full-batch Adam, a little weight decay) from codes to labels."""
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    x_train, x_test = one_hot_codes(train_codes, codebook_size), one_hot_codes(test_codes, codebook_size)
    y_train = torch.as_tensor(train_labels, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    weight = torch.zeros(x_train.shape[1], classes).normal_(0, 0.01, generator=generator).requires_grad_()
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=0.1, weight_decay=1e-4)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(x_train @ weight + bias, y_train).backward()
        optimizer.step()
    with torch.no_grad():
        predicted = (x_test @ weight + bias).argmax(dim=1).numpy()
    majority = np.bincount(train_labels, minlength=classes).argmax()
    return ProbeResult(
        accuracy=float((predicted == test_labels).mean()),
        chance=float((test_labels == majority).mean()),
        classes=classes,
        train_pairs=len(train_labels),
        test_pairs=len(test_labels),
    )
