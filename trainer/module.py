"""The LightningModule: a ``Net`` trained by cross-entropy, scored by top-1 (and top-5) accuracy.

It receives built parts (the net, a partial optimizer, a partial scheduler, an optional batch mixer) and
the run's config as a plain dict, which is all it saves as hyperparameters: checkpoints then hold only
tensors and plain data and load with ``torch.load(weights_only=True)``.

Clip-level vs video-level testing: a test batch may carry ``video`` (the index of the video each view
comes from). Logits of all views of a video are averaged; ``test/acc`` is then the video-level accuracy
and ``test/clip_acc`` the accuracy of single views.

Metrics for imbalanced data: top-1 accuracy comes from a confusion matrix per split (one update per step, as
the accuracy metric it replaces), which also gives the mean-class accuracy ``val/acc_macro`` / ``test/acc_macro``
(the mean over the classes present of each class's accuracy) and, at test, the per-class accuracies.
``class_weights`` weights the training loss per class: ``balanced`` (inverse class frequency of the training
split, read from the DataModule when fitting starts) or one float per class. Validation and test losses stay
unweighted, so they compare across runs with and without weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from data.sampler import balanced_class_weights
from nets.tta import check_tta, tta_logits
from runs.inference_info import INFERENCE_KEY, inference_record
from runs.nonfinite import ConsecutiveSkips, check_nonfinite_mode, check_update
from trainer.optim import no_decay_names, norm_names, param_groups

log = logging.getLogger(__name__)


class ClassificationModule(pl.LightningModule):
    def __init__(
        self,
        *,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        lr: float | None = None,
        weight_decay: float = 0.0,
        scheduler: Callable[..., Any] | None = None,
        label_smoothing: float = 0.0,
        exclude_norm_bias_from_wd: bool = True,
        mixer: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
        run_config: dict | None = None,
        nonfinite: str = "error",
        max_consecutive_skips: int = 10,
        group_params: Callable[..., list[dict]] | None = None,
        norm_group: bool = False,
        tta: str = "none",
        class_weights: str | Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.nonfinite = check_nonfinite_mode(nonfinite)
        self.consecutive_skips = ConsecutiveSkips(max_consecutive_skips)  # nonfinite=skip stops a diverged run
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"module.label_smoothing={label_smoothing} must be in [0, 1)")
        self.save_hyperparameters({"config": run_config or {}}, logger=False)
        self.net = net
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        # The base values the parameter groups are built from, given apart from the optimizer (the config
        # interpolates the optimizer's): fine-tuning scales the lr per group; norms and biases get no decay.
        self.lr, self.weight_decay = lr, weight_decay
        # Named per-stage groups with their own lrs (trainer.callbacks.finetune.FineTune.param_groups), else
        # decay/no-decay.
        self.group_params = group_params
        self.label_smoothing = label_smoothing
        self.exclude_norm_bias_from_wd = exclude_norm_bias_from_wd
        self.mixer = mixer
        # BatchNorm parameters in parameter groups of their own (marked ``norm``: decoupled_sgd's norm_lr_scale).
        self.norm_group = norm_group
        self.tta = check_tta(tta)  # test-time augmentation of the test split (nets/tta.py)
        n = net.num_classes
        # "balanced" is resolved in setup(), from the training labels; a list is checked here, before any training.
        self.class_weights_option = class_weights
        self.register_buffer("class_weights", check_class_weights(class_weights, n), persistent=False)
        # Top-5 says little with 10 classes or fewer (CIFAR-10: ~99.9 %), and each logged value costs ~1 ms per epoch.
        self.top_k = (1, 5) if n > 10 else (1,)
        # Top-1 (micro and macro) and per-class accuracy come from the confusion matrix; top-5 needs the logits.
        self.confmats = nn.ModuleDict({split: MulticlassConfusionMatrix(num_classes=n) for split in ("val", "test")})
        self.metrics = nn.ModuleDict(
            {
                f"{split}_top{k}": MulticlassAccuracy(num_classes=n, top_k=k, average="micro")
                for split in ("val", "test")
                for k in self.top_k[1:]
            }
        )
        # Only finite losses reach train_loss (check_update): no NaN check (a host sync per step on a GPU).
        self.train_loss = MeanMetric(nan_strategy="disable")
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.train_loss.persistent(True)  # a mid-epoch checkpoint keeps the epoch's running mean
        # Training accuracy of the epoch (against the hard label; the larger share of a mixup/cutmix pair).
        self.train_acc = MeanMetric(nan_strategy="disable")
        self.train_acc.persistent(True)
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # in checkpoints: a resumed run keeps the best so far
        # (num_classes, num_classes) counts of the last test, rows: true class; of videos when views were averaged.
        self.test_confusion: Tensor | None = None
        self.skipped = 0  # unreadable samples dropped by the loader during training
        self.skipped_nonfinite = 0  # updates dropped for a non-finite loss or gradient (nonfinite=skip)
        self.fit_totals: dict[str, int] = {}  # the two counts over all processes, set when fitting ends
        # (batch_idx, loss, batch size, accuracy) of the batches of the coming optimizer step
        self._pending_losses: list[tuple[int, Tensor, int, Tensor]] = []
        self._test_views: list[tuple[Tensor, Tensor, Tensor]] = []
        # One input as the net sees it in evaluation, (C, H, W) or (C, T, H, W): stored in checkpoints for inference.
        self.input_shape: list[int] | None = None

    def forward(self, input: Tensor, boxes: list[Tensor] | None = None) -> Tensor:
        return self.net(input, boxes)

    def loss(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        # Soft targets (mixup/cutmix) arrive as (B, num_classes) probabilities; cross_entropy takes both.
        return F.cross_entropy(logits, target, weight=weight, label_smoothing=self.label_smoothing)

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.class_weights_option == "balanced" and self.class_weights is None:
            datamodule = self.trainer.datamodule
            if datamodule is None:
                raise ValueError(
                    "module.class_weights=balanced reads the training labels from the DataModule; fit with "
                    "datamodule=..., or give the weights as a list of floats"
                )
            weights = balanced_class_weights(datamodule.train_targets(), datamodule.class_names)
            self.class_weights = check_class_weights(weights.tolist(), self.net.num_classes).to(self.device)
            log.info("class weights (balanced): %s", [round(w, 4) for w in weights.tolist()])

    # --- training -----------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> Tensor | None:
        self.skipped += batch.get("num_skipped", 0)
        if "input" not in batch:  # every sample of the batch was unreadable
            return None
        x, y = batch["input"], batch["target"]
        if self.input_shape is None:  # until an evaluation batch gives it (same size: train crops match eval's)
            self.input_shape = list(x.shape[1:])
        if self.mixer is not None:
            x, y = self.mixer(x, y)
        logits = self(x, batch.get("boxes"))
        loss = self.loss(logits, y, weight=self.class_weights)
        hard = y if y.ndim == 1 else y.argmax(1)  # (B,)
        acc = (logits.detach().argmax(1) == hard).float().mean()  # on the device: no host sync
        # Checked with the gradients just before the optimizer step (one host sync per step, none here).
        self._pending_losses.append((batch_idx, loss.detach(), len(x), acc))
        # self.log costs about a millisecond per call: the epoch mean accumulates on the device, and the step
        # value (the progress bar's) is logged only as often as the loggers write (trainer.log_every_n_steps).
        if self.global_step % self.trainer.log_every_n_steps == 0:
            self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False, prog_bar=True, batch_size=len(x))
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        pending, self._pending_losses = self._pending_losses, []
        # fp16: the grad scaler itself skips steps with inf/nan gradients (and lowers its scale), so only the
        # losses are checked; a batch with a non-finite loss has non-finite gradients for the scaler to skip.
        scaled = getattr(self.trainer.precision_plugin, "scaler", None) is not None
        ok = check_update(
            None if scaled else self.net,
            optimizer,
            losses=[(i, loss) for i, loss, _, _ in pending],
            step=self.global_step,
            epoch=self.current_epoch,
            mode=self.nonfinite,
        )
        self.consecutive_skips.count(ok, step=self.global_step)
        if not ok:
            self.skipped_nonfinite += 1
            return
        for _, loss, n, acc in pending:
            self.train_loss.update(loss, weight=n)
            self.train_acc.update(acc, weight=n)

    def on_train_batch_end(self, outputs: Any, batch: dict, batch_idx: int) -> None:
        # At the epoch's last batch rather than in on_train_epoch_end: callbacks' epoch-end hooks (History)
        # run before the module's, and would otherwise read the previous epoch's values.
        if batch_idx + 1 == self.trainer.num_training_batches:
            self._log_epoch_summary()

    def on_train_epoch_end(self) -> None:
        if self.train_loss.update_count:  # the epoch ended early (or its length is unknown)
            self._log_epoch_summary()

    def _log_epoch_summary(self) -> None:
        if self.train_loss.update_count:
            self.log("train/loss", self.train_loss.compute())  # synced over processes by torchmetrics
            self.log("train/acc", self.train_acc.compute())
        self.train_loss.reset()
        self.train_acc.reset()

    def on_train_end(self) -> None:
        # Run totals for results.json, gathered once here rather than logged every epoch (a log call costs about a
        # millisecond, and a collective under DDP). Unreadable files are each process's own (summed); skipped
        # updates are the same on every process, as they see the same averaged gradients (max).
        counts = self.all_gather(torch.tensor([self.skipped, self.skipped_nonfinite], device=self.device))
        counts = counts.reshape(-1, 2)  # (processes, 2)
        self.fit_totals = {
            "data/skipped": int(counts[:, 0].sum()),
            "train/skipped_nonfinite": int(counts[:, 1].max()),
        }

    # Counters run over the whole fit, so a resumed run must start from the checkpoint's counts.
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["counters"] = {"skipped": self.skipped, "skipped_nonfinite": self.skipped_nonfinite}
        # What eval/extract/export/predict need besides the weights (runs/inference_info.py).
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        checkpoint[INFERENCE_KEY] = inference_record(
            input_shape=self.input_shape,
            mean=getattr(datamodule, "mean", None),
            std=getattr(datamodule, "std", None),
            class_names=getattr(datamodule, "class_names", None),
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.input_shape = (checkpoint.get(INFERENCE_KEY) or {}).get("input_shape")
        counters = checkpoint.get("counters", {})
        self.skipped = counters.get("skipped", 0)
        self.skipped_nonfinite = counters.get("skipped_nonfinite", 0)

    # --- evaluation ---------------------------------------------------------------------------------
    def _eval_step(self, batch: dict, split: str) -> Tensor:
        if split == "test" and self.tta != "none" and batch.get("boxes") is None:
            logits = tta_logits(self, batch["input"], self.tta)
        else:
            logits = self(batch["input"], batch.get("boxes"))
        self.input_shape = list(batch["input"].shape[1:])
        target = batch["target"]
        getattr(self, f"{split}_loss").update(self.loss(logits, target), weight=len(target))
        self.confmats[split].update(logits, target)
        for k in self.top_k[1:]:
            self.metrics[f"{split}_top{k}"].update(logits, target)
        return logits

    def _log_metrics(self, split: str, acc_name: str = "acc") -> tuple[Tensor, Tensor]:
        """Logs ``<split>/<acc_name>`` (and ``_macro``, ``_top5``) and the loss; returns (accuracy, confusion)."""
        confusion = self.confmats[split].compute()  # (C, C) counts, summed over processes
        acc, macro = confusion_accuracies(confusion)
        self.log(f"{split}/{acc_name}", acc, prog_bar=True)
        self.log(f"{split}/{acc_name}_macro", macro)
        if 5 in self.top_k:
            self.log(f"{split}/{acc_name}_top5", self.metrics[f"{split}_top5"].compute())
        self.log(f"{split}/loss", getattr(self, f"{split}_loss").compute())
        for metric in (self.confmats[split], *(self.metrics[f"{split}_top{k}"] for k in self.top_k[1:])):
            metric.reset()
        getattr(self, f"{split}_loss").reset()
        return acc, confusion

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        acc, _ = self._log_metrics("val")
        if not self.trainer.sanity_checking:
            self.val_acc_best.update(acc)
            self.log("val/acc_best", self.val_acc_best.compute())

    def test_step(self, batch: dict, batch_idx: int) -> None:
        logits = self._eval_step(batch, "test")
        if "video" in batch:
            self._test_views.append(
                (batch["video"].detach().cpu(), logits.detach().float().cpu(), batch["target"].cpu())
            )

    def on_test_epoch_end(self) -> None:
        views = self._gather_views()
        self._test_views.clear()
        if views is None:
            _, confusion = self._log_metrics("test")
        else:
            self._log_metrics("test", acc_name="clip_acc")
            confusion = video_confusion(*views, num_classes=self.net.num_classes)
            acc, macro = confusion_accuracies(confusion)
            self.log("test/acc", acc)
            self.log("test/acc_macro", macro)
        self.test_confusion = confusion.cpu()

    def _gather_views(self) -> tuple[Tensor, Tensor, Tensor] | None:
        """(video, logits, target) of the test views of all processes; None when no batch carried ``video``.

        Under DDP every process takes part in the gather, also one whose (unpadded, possibly shorter) shard
        held no views, and the views of one video may sit on different processes: they are averaged after.
        """
        parts = [tuple(torch.cat(t) for t in zip(*self._test_views, strict=True))] if self._test_views else []
        if self.trainer.world_size > 1:
            gathered: list = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, parts)
            parts = [p for rank_parts in gathered for p in rank_parts]
        if not parts:
            return None
        video, logits, target = (torch.cat(t) for t in zip(*parts, strict=True))
        return video, logits, target

    # --- optimisation -------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise ValueError(
                "this ClassificationModule was built without an optimizer (for evaluation): "
                "pass optimizer= (a partial torch.optim optimizer, the `optimizer` config) to train it"
            )
        skip = no_decay_names(self.net) if self.exclude_norm_bias_from_wd else set()
        if self.group_params is not None:
            if self.lr is None:
                raise ValueError(
                    "fine-tuning groups scale the base lr, and module.lr is unset: give the optimizer an lr "
                    "(module.lr follows optimizer.lr) or set module.lr"
                )
            groups = self.group_params(self.net, lr=self.lr, weight_decay=self.weight_decay, skip=skip)
        else:
            groups = param_groups(
                (("net." + n, p) for n, p in self.net.named_parameters()),
                skip={"net." + n for n in skip},
                weight_decay=self.weight_decay,
                norm={"net." + n for n in norm_names(self.net)} if self.norm_group else frozenset(),
                group="net",  # one lr: one lr/net column in metrics.csv for the decayed and undecayed halves
                **({} if self.lr is None else {"lr": self.lr}),  # without one, the optimizer's own default
            )
        optimizer = self.optimizer_factory(groups)
        if self.scheduler_factory is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        scheduler = self.scheduler_factory(optimizer, total_steps=total, steps_per_epoch=per_epoch)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def video_confusion(video: Tensor, logits: Tensor, target: Tensor, *, num_classes: int) -> Tensor:
    """``(C, C)`` confusion counts of videos, each predicted from the summed logits of all views that share its
    video index (rows: true class)."""
    ids, inverse = torch.unique(video, return_inverse=True)
    summed = torch.zeros(len(ids), logits.shape[1]).index_add_(0, inverse, logits.float())  # (videos, C)
    labels = torch.zeros(len(ids), dtype=torch.long).scatter_(0, inverse, target)  # (videos,)
    cells = labels * num_classes + summed.argmax(1)
    return torch.bincount(cells, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def confusion_accuracies(confusion: Tensor) -> tuple[Tensor, Tensor]:
    """Accuracy (correct / all) and mean-class accuracy (the mean, over the classes with samples, of each
    class's accuracy) of ``(C, C)`` counts with rows the true class; NaN without samples."""
    correct = confusion.diagonal().sum()
    return correct / confusion.sum(), per_class_accuracy(confusion).nanmean().float()


def per_class_accuracy(confusion: Tensor) -> Tensor:
    """``(C,)`` accuracy of each class (its correct predictions / its samples: the recall); NaN for a class
    without samples."""
    confusion = confusion.double()
    return confusion.diagonal() / confusion.sum(1)


def class_accuracies(confusion: Tensor, class_names: Sequence[str]) -> dict[str, float | None]:
    """Class name -> accuracy (None for a class without test samples), for results.json."""
    acc = per_class_accuracy(confusion).tolist()
    if len(acc) != len(class_names):
        raise ValueError(f"a {len(acc)}-class confusion matrix but {len(class_names)} class names")
    return {name: None if a != a else a for name, a in zip(class_names, acc, strict=True)}  # a != a: NaN


def check_class_weights(weights: str | Sequence[float] | None, num_classes: int) -> Tensor | None:
    """``module.class_weights`` as a ``(num_classes,)`` tensor; None for none (or for ``balanced``, set later)."""
    if weights is None or weights == "balanced":
        return None
    if isinstance(weights, str):
        raise ValueError(f"module.class_weights={weights!r} must be 'balanced', a list of floats, or null")
    values = [float(w) for w in weights]
    if len(values) != num_classes:
        raise ValueError(
            f"module.class_weights has {len(values)} values but the model has {num_classes} classes; give one "
            f"weight per class, or module.class_weights=balanced"
        )
    if not all(w > 0 and w != float("inf") for w in values):
        raise ValueError(f"module.class_weights={values} must all be positive and finite")
    return torch.tensor(values, dtype=torch.float32)
