"""One training loop, shared word for word by NetBuilder's trainer and the exported train.py.

Standalone on purpose (torch and the standard library only): the export bundle carries this very
file next to train.py, so a run in the app and `python train.py` with the same settings execute
the same code and, on CPU with the same seed, end with the same weights. Settings are read by
attribute from any object with TrainConfig's field names (the app's TrainConfig, train.py's
argparse namespace). What the app watches (gradient norms, activations, attention maps, status,
checkpoints) happens in `Hooks` methods around the loop; the loop itself only trains. The code
around it (device, checkpoint, stop, records) is run.py, shipped beside it the same way.

Two loops share one epoch/batch skeleton (`Epochs`): `Loop` trains a model against targets,
`GanLoop` a generator against a discriminator; both take the same settings (optimizer, schedule,
warmup, clipping, mixed precision, patience).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

CLASS_LOSSES = ("cross_entropy", "nll")
STEP_DECAY_POINTS = (0.5, 0.75)  # the "step" schedule divides the lr by 10 at these fractions
CONFUSION_MAX_CLASSES = 30  # a confusion matrix is kept for classifiers with at most this many


class Diverged(Exception):
    """The training loss stopped being a finite number."""

    def __init__(self, step: int) -> None:
        super().__init__(f"the loss is not finite at step {step}")
        self.step = step


@dataclass
class Data:
    """Train and validation tensors; y is x itself when the model learns to reproduce its input.

    x may instead be image_folder.LazyImages (pictures decoded as they are asked for): the loop
    draws training batches with `index_select` (augmented), reads validation by slices (as they
    are), and tells it each epoch's batches first (`plan`), so that DataLoader workers decode
    them ahead of the steps.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


def new_totals() -> torch.Tensor:
    """[loss x samples, hits (classifiers) or absolute error (others)], summed on the device."""
    return torch.zeros(2, dtype=torch.float64)


@dataclass
class Progress:
    """Where training stands; a checkpoint saves it so that a resume continues exactly."""

    step: int = 0
    epoch: int = 0  # completed epochs
    batch: int = 0  # batches done in the current epoch
    # This epoch's sums so far: new_totals() on the device, and what they were summed over.
    totals: torch.Tensor = field(default_factory=new_totals)
    samples: int = 0
    predictions: int = 0  # class predictions (accuracy) or output values (mean absolute error)
    best_val_loss: float | None = None
    stale_epochs: int = 0


@dataclass
class Step:
    """One optimisation step, as the hooks see it (tensors stay on the device)."""

    step: int
    epoch: int
    index: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    output: torch.Tensor
    loss: torch.Tensor
    lr: float


class Hooks:
    """Places to watch the loop from; each does nothing here. Raising from one ends training."""

    def forward(self, step: int) -> AbstractContextManager:
        """Wraps this step's forward pass (e.g. activation hooks)."""
        return nullcontext()

    def after_backward(self, step: int) -> None:
        """Gradients are ready (and unscaled) but not yet clipped or applied."""

    def after_step(self, done: Any) -> None:
        """The optimizer has stepped (a Step, or a GanStep when both players have)."""

    def after_batch(self, progress: Progress) -> None:
        """Progress counts the batch; a hook may flush, checkpoint or stop here."""

    def before_evaluate(self, progress: Progress) -> None:
        """The epoch's batches are done; validation comes next."""

    def after_epoch(self, record: dict[str, Any], progress: Progress) -> None:
        """The epoch's record (losses and metrics) and the progress that counts it."""


# -- small pure pieces -----------------------------------------------------------------------


def split(
    x: torch.Tensor, y: torch.Tensor, settings: Any, device: torch.device | str = "cpu"
) -> Data:
    """A seeded shuffle into train and validation parts, moved to `device`."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(settings.seed))
    held_out = min(len(x) - 1, round(len(x) * settings.val_fraction))
    train, val = order[held_out:], order[:held_out]
    x_train, x_val = x[train].to(device), x[val].to(device)
    if getattr(settings, "target", "label") == "input":
        return Data(x_train, x_train, x_val, x_val)
    return Data(x_train, y[train].to(device), x_val, y[val].to(device))


def epoch_order(seed: int, epoch: int, count: int) -> torch.Tensor:
    """One epoch's shuffled sample order, fixed by seed and epoch so that a resume repeats it."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(count, generator=generator)


def has_batch_statistics(model: nn.Module) -> bool:
    """BatchNorm in training mode needs more than one value per channel in every batch."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def batch_count(samples: int, batch_size: int, drop_single: bool) -> int:
    """Batches per epoch; a last batch of one sample is left out where `drop_single`."""
    batches = math.ceil(samples / batch_size)
    if drop_single and batches > 1 and samples % batch_size == 1:
        return batches - 1
    return batches


def learning_rate(settings: Any, step: int, total_steps: int) -> float:
    """The lr for a 0-based step: linear warmup, then constant, step decay or cosine decay."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, total_steps - settings.warmup_steps)
    if settings.schedule == "step":
        return settings.lr * 0.1 ** sum(progress >= point for point in STEP_DECAY_POINTS)
    if settings.schedule == "cosine":
        return settings.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return settings.lr


def N_(text: str) -> str:
    """Marks a name for translation (the app shows it in the reader's language; this file also
    travels alone in an exported bundle, so it imports nothing of NetBuilder's)."""
    return text


# The optimizers a run can choose, each with its name as shown and how it is built; TrainConfig,
# the Train page and train.py's --optimizer all read this one table.
OPTIMIZERS: dict[str, tuple[str, type[torch.optim.Optimizer], dict[str, Any]]] = {
    "adam": ("Adam", torch.optim.Adam, {}),
    "adamw": ("AdamW", torch.optim.AdamW, {}),
    "sgd": ("SGD", torch.optim.SGD, {}),
    "momentum": (N_("SGD + momentum"), torch.optim.SGD, {"momentum": 0.9}),
    "rmsprop": ("RMSprop", torch.optim.RMSprop, {}),
}
ADAM_BETAS = (0.9, 0.999)  # torch's own default


def make_optimizer(
    settings: Any, parameters: list[nn.Parameter], betas: tuple[float, float] = ADAM_BETAS
) -> torch.optim.Optimizer:
    """The chosen optimizer at the run's peak lr and weight decay; `betas` for Adam and AdamW
    (a GAN's players use DCGAN's (0.5, 0.999), a setting the person does not choose)."""
    _, kind, options = OPTIMIZERS[settings.optimizer]
    if kind in (torch.optim.Adam, torch.optim.AdamW):
        options = {**options, "betas": betas}
    return kind(parameters, lr=settings.lr, weight_decay=settings.weight_decay, **options)


def mixed_precision(
    settings: Any, device: torch.device
) -> tuple[Callable[[], AbstractContextManager], torch.amp.GradScaler | None]:
    """(autocast context, scaler): bfloat16 (or float16 with a scaler) on CUDA; float32
    elsewhere."""
    if not settings.amp or device.type != "cuda":
        return nullcontext, None
    bf16 = torch.cuda.is_bf16_supported()
    dtype = torch.bfloat16 if bf16 else torch.float16

    def autocast() -> AbstractContextManager:
        return torch.autocast("cuda", dtype=dtype)

    return autocast, None if bf16 else torch.amp.GradScaler("cuda")


def resolved_loss(loss: str, targets: torch.Tensor) -> str:
    """`auto` is cross-entropy for integer class targets and mean squared error for floats."""
    if loss != "auto":
        return loss
    return "mse" if torch.is_floating_point(targets) else "cross_entropy"


def compute_loss(
    loss: str,
    out: torch.Tensor,
    y: torch.Tensor,
    label_smoothing: float = 0.0,
    model: nn.Module | None = None,
) -> torch.Tensor:
    """The loss by name; class targets may be one per sample ([B]) or one per position ([B, T]).
    "vae" takes the input as y and the model, whose Reparameterize layers hold the KL term."""
    if loss == "vae":
        return vae_loss(out, y, model)
    if loss == "cross_entropy":
        return F.cross_entropy(out.flatten(0, -2), y.flatten(), label_smoothing=label_smoothing)
    if loss == "nll":
        return F.nll_loss(out.flatten(0, -2), y.flatten())
    target = y.to(out.dtype).view_as(out)
    if loss == "bce_with_logits":
        return F.binary_cross_entropy_with_logits(out, target)
    if loss == "l1":
        return F.l1_loss(out, target)
    if loss == "huber":
        return F.huber_loss(out, target)
    return F.mse_loss(out, target)


def vae_loss(out: torch.Tensor, x: torch.Tensor, model: nn.Module | None) -> torch.Tensor:
    """The PyTorch VAE example's loss per sample: binary cross-entropy of the rebuilt input,
    summed, plus the KL divergence each Reparameterize layer kept from this forward pass."""
    rebuilt = F.binary_cross_entropy(out, x.to(out.dtype).view_as(out), reduction="sum")
    kl = [
        m.kl
        for m in (model.modules() if model else ())
        if isinstance(getattr(m, "kl", None), torch.Tensor)
    ]
    return (rebuilt + sum(kl)) / len(out)


def is_classifier(loss: str) -> bool:
    """Accuracy means something for class targets and for 0/1 targets of bce_with_logits."""
    return loss in CLASS_LOSSES or loss == "bce_with_logits"


def score(out: torch.Tensor, y: torch.Tensor, classes: bool, binary: bool) -> torch.Tensor:
    """Hits for classifiers, else the summed absolute error, of one batch (on the device)."""
    if classes:
        return (out.argmax(-1) == y).sum()
    if binary:
        return ((out > 0) == (y.view_as(out) > 0.5)).sum()
    return (out.float() - y.float().view_as(out)).abs().sum()


def tally(
    progress: Progress,
    out: torch.Tensor,
    y: torch.Tensor,
    loss: torch.Tensor,
    classes: bool,
    binary: bool,
) -> None:
    """Add one batch to the epoch's sums: a few device ops, no wait for the device."""
    out = out.detach()
    progress.totals[0].add_(loss.detach(), alpha=len(y))
    progress.totals[1].add_(score(out, y, classes, binary))
    progress.samples += len(y)
    progress.predictions += y.numel() if classes else out.numel()


def summary(progress: Progress, prefix: str, accuracy: bool) -> dict[str, float | None]:
    """Mean loss and accuracy (or mean absolute error) from an epoch's sums."""
    loss_sum, scored = progress.totals.tolist()
    samples, predictions = progress.samples, progress.predictions
    record: dict[str, float | None] = {f"{prefix}_loss": loss_sum / samples if samples else None}
    key = f"{prefix}_accuracy" if accuracy else f"{prefix}_mae"
    record[key] = scored / predictions if predictions else None
    return record


# -- the skeleton both loops share ------------------------------------------------------------


class Epochs:
    """Epochs of shuffled batches, the learning rate, a step's backward pass and the end of an
    epoch, for a loop that defines `step(index)` and `epoch_record()`.

    A subclass sets, in its __post_init__, through `prepare(samples, drop_single)`: `optimizers`
    (name -> optimizer), `autocast` and `scaler`, `batches`, `total_steps`. Under torchrun each
    of `world` processes takes every world-th sample of each global batch.
    """

    settings: Any
    hooks: Hooks
    progress: Progress
    device: torch.device
    rank: int = 0
    world: int = 1
    optimizers: dict[str, torch.optim.Optimizer]
    training_samples: Any  # what `step` draws from: a tensor, or an image folder read ahead

    def prepare(self, samples: int, drop_single: bool) -> None:
        settings = self.settings
        self.autocast, self.scaler = mixed_precision(settings, self.device)
        self.samples = samples
        self.batches = batch_count(samples, settings.batch_size, drop_single)
        self.left_out = samples - min(samples, self.batches * settings.batch_size)
        self.total_steps = self.batches * settings.epochs
        self.schedule_active = settings.schedule != "constant" or settings.warmup_steps > 0

    def train(self) -> str:
        """'completed', or 'early' when the watched loss stopped improving for `patience`."""
        settings, progress = self.settings, self.progress
        progress.totals = progress.totals.to(self.device)
        size = settings.batch_size
        while progress.epoch < settings.epochs:
            order = epoch_order(settings.seed, progress.epoch, self.samples)
            order = order.to(self.sample_device)
            batches = [
                order[batch * size : (batch + 1) * size][self.rank :: self.world]
                for batch in range(progress.batch, self.batches)
            ]
            read_ahead = getattr(self.training_samples, "plan", None)  # image_folder.LazyImages
            if read_ahead is not None:
                read_ahead(batches, progress.epoch)
            for batch, index in enumerate(batches, start=progress.batch):
                self.step(index)
                progress.batch = batch + 1
                self.hooks.after_batch(progress)
            if self.end_epoch():
                return "early"
        return "completed"

    def step(self, index: torch.Tensor) -> Any:
        raise NotImplementedError

    def epoch_record(self) -> dict[str, Any]:
        """The epoch's losses and metrics (a loop validates here)."""
        raise NotImplementedError

    def next_learning_rate(self) -> float:
        """The lr of the step about to be taken, set in every optimizer: the one path from the
        settings to the optimizers, the same in the app and in train.py."""
        if not self.schedule_active:
            return self.settings.lr
        lr = learning_rate(self.settings, self.progress.step, self.total_steps)
        for optimizer in self.optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = lr
        return lr

    def apply(
        self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, parameters: Any, step: int
    ) -> None:
        """Backward (scaled under float16), the after_backward hook on unscaled gradients,
        clipping, and the optimizer's step. The scaler is updated by the caller, once per step."""
        optimizer.zero_grad(set_to_none=True)
        if self.scaler:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(optimizer)
        else:
            loss.backward()
        self.hooks.after_backward(step)
        if self.settings.grad_clip:
            nn.utils.clip_grad_norm_(parameters, self.settings.grad_clip)
        if self.scaler:
            self.scaler.step(optimizer)
        else:
            optimizer.step()

    def end_epoch(self) -> bool:
        """Record the epoch, check that its numbers are finite, track the watched loss, and say
        whether early stopping ends training."""
        progress, patience = self.progress, self.settings.early_stopping_patience
        self.hooks.before_evaluate(progress)
        record: dict[str, Any] = {"epoch": progress.epoch + 1, "step": progress.step}
        record |= self.epoch_record()
        numbers = [v for v in record.values() if isinstance(v, float)]
        if not all(math.isfinite(value) for value in numbers):
            raise Diverged(progress.step)
        watched = record.get(self.watched_key)
        if watched is None:
            watched = record.get("train_loss")
        if watched is not None:
            if progress.best_val_loss is None or watched < progress.best_val_loss:
                progress.best_val_loss, progress.stale_epochs = watched, 0
            else:
                progress.stale_epochs += 1
        progress.epoch += 1
        progress.batch = 0
        progress.totals = progress.totals.new_zeros(progress.totals.shape)
        progress.samples = progress.predictions = 0
        self.hooks.after_epoch(record, progress)
        return patience is not None and progress.stale_epochs >= patience


# -- the loop --------------------------------------------------------------------------------


@dataclass
class Loop(Epochs):
    """Trains `model` on `data` with `settings`; `train()` runs it to the end (or a resume's).

    Under torchrun, `model` is the DistributedDataParallel wrapper; `optimizer` steps the
    parameters it wraps.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    data: Data
    settings: Any
    loss: str  # the Output's loss (auto resolves against the targets)
    label_smoothing: float = 0.0
    hooks: Hooks = field(default_factory=Hooks)
    progress: Progress = field(default_factory=Progress)
    device: torch.device = torch.device("cpu")
    rank: int = 0
    world: int = 1

    watched_key = "val_loss"  # early stopping watches it (the train loss without validation)

    def __post_init__(self) -> None:
        self.loss = resolved_loss(self.loss, self.data.y_train)
        self.classes = self.loss in CLASS_LOSSES
        self.binary = self.loss == "bce_with_logits"
        self.optimizers = {"model": self.optimizer}
        self.sample_device = self.data.x_train.device
        self.training_samples = self.data.x_train
        self.prepare(len(self.data.x_train), has_batch_statistics(self.model))

    def step(self, index: torch.Tensor) -> Step:
        progress = self.progress
        x = self.data.x_train.index_select(0, index).to(self.device, non_blocking=True)
        y = self.data.y_train.index_select(0, index).to(self.device, non_blocking=True)
        y = x if self.loss == "vae" else y  # a VAE rebuilds its input
        lr = self.next_learning_rate()
        progress.step += 1
        with self.hooks.forward(progress.step), self.autocast():
            output = self.model(x)
            loss = compute_loss(self.loss, output.float(), y, self.label_smoothing, self.model)
        self.apply(loss, self.optimizer, self.model.parameters(), progress.step)
        if self.scaler:
            self.scaler.update()
        tally(progress, output, y, loss, self.classes, self.binary)
        done = Step(progress.step, progress.epoch + 1, index, x, y, output, loss.detach(), lr)
        self.hooks.after_step(done)
        return done

    def epoch_record(self) -> dict[str, Any]:
        record = summary(self.progress, "train", self.classes or self.binary)
        if record["train_loss"] is not None and not math.isfinite(record["train_loss"]):
            raise Diverged(self.progress.step)  # before a validation pass that cannot help
        return record | self.evaluate()

    def evaluate(self, model: nn.Module | None = None) -> dict[str, Any]:
        """Validation loss and accuracy or MAE (None without a validation set); a confusion
        matrix [true][predicted] for classifiers of one label per sample and few classes."""
        model = model or self.model
        x_val, y_val = self.data.x_val, self.data.y_val
        sums = Progress(totals=new_totals().to(self.device))
        out_width = None
        confusion = None
        model.eval()
        with torch.no_grad():
            for start in range(0, len(x_val), self.settings.batch_size):
                x = x_val[start : start + self.settings.batch_size].to(self.device)
                y = y_val[start : start + self.settings.batch_size].to(self.device)
                y = x if self.loss == "vae" else y  # a VAE rebuilds its input
                with self.autocast():
                    output = model(x)
                    loss = compute_loss(self.loss, output.float(), y, self.label_smoothing, model)
                tally(sums, output, y, loss, self.classes, self.binary)
                out_width = output.shape[-1]
                if self.classes and y.dim() == 1 and out_width <= CONFUSION_MAX_CLASSES:
                    pairs = y * out_width + output.argmax(-1)
                    counts = torch.bincount(pairs, minlength=out_width * out_width)
                    confusion = counts if confusion is None else confusion + counts
        model.train()
        record = summary(sums, "val", self.classes or self.binary)
        if confusion is not None and out_width is not None:
            record["confusion"] = confusion.view(out_width, out_width).tolist()
        return record


# -- generative adversarial networks ---------------------------------------------------------

GAN_LOSSES = ("non_saturating", "minimax", "least_squares")
GAN_BETAS = (0.5, 0.999)  # Adam's momentum as DCGAN sets it, for both players
GAN_PARTS = ("d_loss", "g_loss", "d_real", "d_fake")  # an epoch's means, in this order


@dataclass
class GanStep:
    """One round of the game, as the hooks see it (tensors stay on the device)."""

    step: int
    epoch: int
    d_loss: torch.Tensor
    g_loss: torch.Tensor
    d_real: torch.Tensor  # mean D(x): the probability D gives real samples
    d_fake: torch.Tensor  # mean D(G(z)) before D's update
    lr: float


def discriminator_loss(loss: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """D's loss from its scores (logits) on real samples and on (detached) generated ones."""
    if loss == "least_squares":
        return 0.5 * ((real - 1) ** 2).mean() + 0.5 * (fake**2).mean()
    ones, zeros = torch.ones_like(real), torch.zeros_like(fake)
    return F.binary_cross_entropy_with_logits(real, ones) + F.binary_cross_entropy_with_logits(
        fake, zeros
    )


def generator_loss(loss: str, fooled: torch.Tensor) -> torch.Tensor:
    """G's loss from D's scores on its samples: non_saturating maximises log D(G(z)), minimax
    minimises log(1 - D(G(z))), least_squares is LSGAN's square."""
    if loss == "least_squares":
        return 0.5 * ((fooled - 1) ** 2).mean()
    if loss == "minimax":
        return -F.binary_cross_entropy_with_logits(fooled, torch.zeros_like(fooled))
    return F.binary_cross_entropy_with_logits(fooled, torch.ones_like(fooled))


@dataclass
class GanLoop(Epochs):
    """A generator against a discriminator in alternating steps: first D on real samples and
    detached fakes, then G through D's verdict on the same fakes. Each player has its own
    optimizer, both built by make_optimizer from the run's settings (Adam's betas as DCGAN's);
    the schedule, warmup, clipping, mixed precision and patience (on G's loss) apply to both."""

    generator: nn.Module
    discriminator: nn.Module
    real: torch.Tensor  # the training samples; the generator learns to imitate them
    settings: Any
    noise_shape: tuple[int, ...]
    loss: str = "non_saturating"
    hooks: Hooks = field(default_factory=Hooks)
    progress: Progress = field(default_factory=Progress)
    device: torch.device = torch.device("cpu")

    watched_key = "g_loss"  # early stopping watches the generator's loss

    def __post_init__(self) -> None:
        make = partial(make_optimizer, self.settings, betas=GAN_BETAS)
        self.g_optimizer = make(list(self.generator.parameters()))
        self.d_optimizer = make(list(self.discriminator.parameters()))
        self.optimizers = {"generator": self.g_optimizer, "discriminator": self.d_optimizer}
        self.sample_device = self.real.device
        self.training_samples = self.real
        self.progress.totals = torch.zeros(len(GAN_PARTS), dtype=torch.float64)
        self.prepare(len(self.real), True)

    def step(self, index: torch.Tensor) -> GanStep:
        progress = self.progress
        real = self.real.index_select(0, index).to(self.device, non_blocking=True)
        noise = torch.randn(len(real), *self.noise_shape, device=self.device)
        lr = self.next_learning_rate()
        progress.step += 1
        with self.autocast():
            fake = self.generator(noise)
            real_scores = self.discriminator(real).float()
            fake_scores = self.discriminator(fake.detach()).float()
            d_loss = discriminator_loss(self.loss, real_scores, fake_scores)
        self.apply(d_loss, self.d_optimizer, self.discriminator.parameters(), progress.step)
        with self.autocast():
            g_loss = generator_loss(self.loss, self.discriminator(fake).float())
        self.apply(g_loss, self.g_optimizer, self.generator.parameters(), progress.step)
        if self.scaler:
            self.scaler.update()
        d_real = torch.sigmoid(real_scores.detach()).mean()
        d_fake = torch.sigmoid(fake_scores.detach()).mean()
        parts = torch.stack([d_loss.detach(), g_loss.detach(), d_real, d_fake]).double()
        progress.totals.add_(parts, alpha=len(real))
        progress.samples += len(real)
        done = GanStep(
            progress.step, progress.epoch + 1, d_loss.detach(), g_loss.detach(), d_real, d_fake, lr
        )
        self.hooks.after_step(done)
        return done

    def epoch_record(self) -> dict[str, Any]:
        """The epoch's mean losses and D's mean probabilities on real and generated samples."""
        samples = max(self.progress.samples, 1)
        means = [value / samples for value in self.progress.totals.tolist()]
        return dict(zip(GAN_PARTS, means, strict=True))
