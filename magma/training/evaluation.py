"""Evaluation on held-out shards: token-weighted loss, action-token accuracy (robot bins / latent
codes, on samples of sources with an action codec) and UI-action exact match (the teacher-forced
argmax answer, parsed in the reference's grammar, equals the reference action)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from magma.actions import GRAMMARS, ActionParseError, UIAction, parse_ui_action
from magma.data.records import TrainBatch
from magma.model import IGNORE_INDEX

ACTION_TOKEN_SPAN = 256  # robot bins and latent codes both live in the last 256 ids of the base vocabulary


@dataclass
class EvalTotals:
    """Sums over one eval source on one process; reduced across processes before division."""

    loss_sum: float = 0.0
    tokens: int = 0
    action_correct: int = 0
    action_tokens: int = 0
    ui_correct: int = 0
    ui_samples: int = 0
    samples: int = 0
    action_loss_sum: float = 0.0  # the l1/flow head's loss x its values
    action_values: int = 0

    def as_tensor(self) -> torch.Tensor:
        return torch.tensor([float(getattr(self, name)) for name in self.__dataclass_fields__], dtype=torch.float64)

    @classmethod
    def from_tensor(cls, values: torch.Tensor) -> EvalTotals:
        names = list(cls.__dataclass_fields__)
        return cls(
            **{
                name: (float(v) if name.endswith("loss_sum") else int(v))
                for name, v in zip(names, values.tolist(), strict=True)
            }
        )

    def metrics(self, prefix: str) -> dict[str, float]:
        metrics = {f"{prefix}/samples": self.samples}
        if self.tokens:
            metrics[f"{prefix}/loss"] = self.loss_sum / self.tokens
        if self.action_tokens:
            metrics[f"{prefix}/action_token_accuracy"] = self.action_correct / self.action_tokens
        if self.ui_samples:
            metrics[f"{prefix}/ui_exact_match"] = self.ui_correct / self.ui_samples
        if self.action_values:
            metrics[f"{prefix}/action_loss"] = self.action_loss_sum / self.action_values
        return metrics


def reference_ui_action(text: str) -> tuple[UIAction, str] | None:
    """The UI action a reference answer states and the grammar it is written in, if any."""
    for grammar in GRAMMARS:
        try:
            return parse_ui_action(text, grammar), grammar
        except ActionParseError:
            continue
    return None


def last_labelled_run(row_targets: torch.Tensor, row_predictions: torch.Tensor) -> tuple[list[int], list[int]]:
    """Targets and predictions of the last contiguous labelled span (the final assistant turn)."""
    labelled = (row_targets != IGNORE_INDEX).nonzero().flatten().tolist()
    start = len(labelled) - 1
    while start > 0 and labelled[start - 1] == labelled[start] - 1:
        start -= 1
    keep = len(labelled) - start
    return row_targets[labelled[start:]].tolist(), row_predictions[-keep:].tolist() if keep else []


class BatchScorer:
    """Adds one batch's loss, action-token and UI-action counts to per-source totals."""

    def __init__(self, tokenizer, base_vocab_size: int, action_sources: set[str]) -> None:
        self.tokenizer = tokenizer
        self.action_ids = (base_vocab_size - ACTION_TOKEN_SPAN, base_vocab_size)
        self.action_sources = action_sources

    def add(self, totals: EvalTotals, batch: TrainBatch, loss: torch.Tensor, count: int, predictions: torch.Tensor):
        totals.loss_sum += float(loss) * count
        totals.tokens += count
        totals.samples += len(batch.sample_ids)
        targets = batch.inputs.labels[:, 1:].cpu()
        predictions = predictions.cpu()
        per_row = (targets != IGNORE_INDEX).sum(dim=1).tolist()
        for row, row_predictions in enumerate(predictions.split(per_row)):
            row_targets = targets[row]
            if batch.sources[row] in self.action_sources:
                gold = row_targets[row_targets != IGNORE_INDEX]
                is_action = (gold >= self.action_ids[0]) & (gold < self.action_ids[1])
                totals.action_tokens += int(is_action.sum())
                totals.action_correct += int((row_predictions[is_action] == gold[is_action]).sum())
                continue
            gold_ids, predicted_ids = last_labelled_run(row_targets, row_predictions)
            reference = reference_ui_action(self.tokenizer.decode(gold_ids, skip_special_tokens=True))
            if reference is None:
                continue
            action, grammar = reference
            totals.ui_samples += 1
            predicted_text = self.tokenizer.decode(predicted_ids, skip_special_tokens=True)
            with contextlib.suppress(ActionParseError):  # unparseable model output counts as a miss
                totals.ui_correct += parse_ui_action(predicted_text, grammar) == action


def lockstep(batches: Iterable[TrainBatch], any_process_has_more) -> Iterator[tuple[TrainBatch, bool]]:
    """Yield (batch, counts) until every process is done; a process that ran out repeats its last batch
    with counts=False, so sharded models (FSDP, ZeRO-3) see the same number of forward passes everywhere."""
    iterator = iter(batches)
    last = None
    while True:
        batch = next(iterator, None)
        if not any_process_has_more(batch is not None):
            return
        if batch is not None:
            last = batch
            yield batch, True
        elif last is not None:
            yield last, False
