"""Image recognition (the paper's fourth family): classify images with a multi-exit CNN.

The images are scikit-learn's bundled handwritten digits (1797 grey 8x8 images, 10
classes), or, with ``data_dir``, a folder of the user's own images in one sub-folder per
class; either way they are resized to ``image_size`` square. The *base* images are split
by image (a seeded, per-class shuffle) into training, validation and test, so that no
test digit is ever seen in training, in any corruption.

Easy and hard instances come from a seeded **corruption pipeline** (``corrupt``) applied
at a *severity* ``s`` in ``[0, 1]``: a random rotation, zoom and shift, Gaussian blur, a
cut-out square, a loss of contrast and additive Gaussian noise, each drawn with a
strength proportional to ``s`` (``s = 0`` leaves the image as it is). Training draws an
endless stream: a random training-split base image at a severity drawn uniformly from
``[0, max(severities)]``, corrupted afresh each time. The validation and test sets are
generated once, deterministically from the task seed: ``val_per_severity`` and
``test_per_severity`` corrupted images at each listed severity, from the validation and
test base images only. The groups are the severity levels, so every table reports the
accuracy per severity. ``severities: []`` gives the plain images (one group, ``"all"``;
validation and test are then the base images themselves).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from l2s_gym.config import ConfigError, non_negative, positive
from l2s_gym.registry import register_task
from l2s_gym.task import Batch, Task
from l2s_gym.tasks.denoising import IMAGE_SUFFIXES, read_grey_image


def class_folder_images(
    data_dir: str, image_size: int, path: str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images ``(N, S, S)`` in [0, 1], labels ``(N,)`` and class names from class sub-folders.

    Every image is converted to grey and resized to ``image_size`` square. Raises
    ``ConfigError`` naming the problem: the folder is missing, a class sub-folder holds
    no readable image, or fewer than two classes are found.
    """
    from PIL import Image

    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{path}.data_dir: no such folder {str(folder)!r}")
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    images, labels = [], []
    for label, name in enumerate(classes):
        count = 0
        for file in sorted((folder / name).iterdir()):
            if not (file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES):
                continue
            image = read_grey_image(file)
            if image is None:
                continue
            pil = Image.fromarray((image * 255).astype(np.uint8))
            resized = pil.resize((image_size, image_size), Image.BILINEAR)
            images.append(np.asarray(resized, dtype=np.float32) / 255.0)
            labels.append(label)
            count += 1
        if count == 0:
            raise ConfigError(
                f"{path}.data_dir: class folder {name!r} holds no readable images "
                f"({', '.join(IMAGE_SUFFIXES)})"
            )
    if len(classes) < 2:
        raise ConfigError(
            f"{path}.data_dir: found {len(classes)} class sub-folder(s) in {str(folder)!r}; "
            "recognition needs at least two classes, one sub-folder of images per class"
        )
    return np.stack(images), np.asarray(labels, dtype=np.int64), classes


@dataclass
class RecognitionConfig:
    """Parameters of the recognition task (default: scikit-learn's digits, corrupted)."""

    data_dir: str = ""
    """A folder with one sub-folder of images per class, instead of the digits."""
    image_size: int = 8
    """Side of every image: the digits are 8x8 (other sizes resample them, bilinear),
    ``data_dir`` images are resized to it. Corruptions are applied at this size."""
    val_fraction: float = 0.2
    """Share of the base images (per class) held out for validation."""
    test_fraction: float = 0.3
    """Share of the base images (per class) held out for testing."""
    train_noise: float = 0.0
    """Std of extra Gaussian noise added to training images (augmentation; 0: off)."""
    severities: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    """Corruption severities of the validation and test sets (the groups), each in
    ``[0, 1]``; training draws severities uniformly from ``[0, max]``. Empty: no
    corruption (validation and test are the base images; one group ``"all"``)."""
    val_per_severity: int = 600
    """Corrupted validation images at each severity (drawn from the validation bases)."""
    test_per_severity: int = 1000
    """Corrupted test images at each severity (drawn from the test bases)."""
    rotation: float = 30.0
    """Largest rotation (degrees) at severity 1; drawn uniformly in ``+-s * rotation``."""
    shift: float = 0.1
    """Largest shift, as a fraction of the side, at severity 1 (per axis)."""
    zoom: float = 0.2
    """Largest relative zoom change at severity 1 (scale drawn in ``1 +- s * zoom``)."""
    blur: float = 0.1
    """Largest Gaussian blur sigma, as a fraction of the side, at severity 1."""
    occlusion: float = 0.25
    """Side of the cut-out square, as a fraction of the image side, at severity 1."""
    contrast: float = 0.4
    """Largest share of contrast removed at severity 1 (plus a random brightness offset)."""
    noise: float = 0.15
    """Std of additive Gaussian noise at severity 1 (images in [0, 1], clipped after)."""

    def validate(self, path: str) -> None:
        positive(self, path, "image_size", "val_fraction", "test_fraction")
        positive(self, path, "val_per_severity", "test_per_severity")
        non_negative(
            self, path, "train_noise", "rotation", "shift", "zoom", "blur", "occlusion",
            "contrast", "noise",
        )  # fmt: skip
        if self.image_size < 4:
            raise ConfigError(f"{path}.image_size: must be >= 4, got {self.image_size!r}")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ConfigError(
                f"{path}.test_fraction: val_fraction + test_fraction must leave at least 10% "
                f"for training, got {self.val_fraction} + {self.test_fraction}"
            )
        if any(not 0.0 <= s <= 1.0 for s in self.severities):
            raise ConfigError(f"{path}.severities: each must be in [0, 1], got {self.severities}")
        if len(set(self.severities)) != len(self.severities):
            raise ConfigError(f"{path}.severities: a severity is listed twice: {self.severities}")
        for name in ("occlusion", "contrast"):
            if getattr(self, name) > 1:
                raise ConfigError(f"{path}.{name}: must be in [0, 1], got {getattr(self, name)!r}")


def _uniform(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    """Uniform draws in ``[-1, 1)``."""
    return torch.rand(shape, generator=generator, device=device) * 2.0 - 1.0


def _gaussian_blur(images: Tensor, sigma: Tensor, max_sigma: float) -> Tensor:
    """Blur each image ``(B, 1, S, S)`` with its own Gaussian ``sigma`` ``(B,)`` in pixels
    (separable; ``max_sigma`` sizes the kernel)."""
    b, _, side, _ = images.shape
    radius = max(1, min(math.ceil(3.0 * max_sigma), side - 1))
    x = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    s = sigma.clamp(min=1e-3).unsqueeze(1)
    kernel = torch.exp(-0.5 * (x.unsqueeze(0) / s) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (B, K); sigma ~ 0 gives a delta
    flat = images.reshape(1, b, side, side)
    flat = F.conv2d(flat, kernel.view(b, 1, -1, 1), padding=(radius, 0), groups=b)
    flat = F.conv2d(flat, kernel.view(b, 1, 1, -1), padding=(0, radius), groups=b)
    return flat.reshape(b, 1, side, side)


def corrupt(
    images: Tensor, severity: Tensor, cfg: RecognitionConfig, generator: torch.Generator
) -> Tensor:
    """Corrupt ``images`` ``(B, 1, S, S)`` in [0, 1] at per-image ``severity`` ``(B,)``.

    In this order, every strength proportional to ``s``: an affine warp (rotation in
    ``+-s rotation`` degrees, scale ``1 +- s zoom``, shift ``+-s shift`` of the side per
    axis; bilinear, black outside); a Gaussian blur of sigma ``s blur S U(0.5, 1)`` pixels; a
    cut-out square of side ``s occlusion S`` at a random place, filled with a random grey;
    a loss of contrast ``x -> c x + o`` with ``c = 1 - s contrast U(0.5, 1)`` and a random
    offset ``o`` in ``[0, 1 - c]``; Gaussian noise of std ``s noise``; clipping to [0, 1].
    Deterministic given ``generator`` (a fixed number of draws per call).
    """
    b, _, side, _ = images.shape
    dev = images.device
    s = severity.to(dtype=images.dtype, device=dev)
    x = images
    # Geometry: output pixel p samples the input at A p + t (normalised coordinates).
    angle = _uniform((b,), generator, dev) * s * math.radians(cfg.rotation)
    scale = 1.0 + _uniform((b,), generator, dev) * s * cfg.zoom
    shift = _uniform((b, 2), generator, dev) * s.unsqueeze(1) * (2.0 * cfg.shift)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, [b, 1, side, side], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # Blur.
    sigma = s * cfg.blur * side * (0.75 + 0.25 * _uniform((b,), generator, dev))
    if cfg.blur > 0:
        x = _gaussian_blur(x, sigma, cfg.blur * side)
    # Cut-out: a square of side s * occlusion * S, filled with a random grey.
    size = s * cfg.occlusion * side
    corner = (torch.rand((b, 2), generator=generator, device=dev)) * (side - size).unsqueeze(1)
    fill = torch.rand((b,), generator=generator, device=dev)
    coords = torch.arange(side, device=dev, dtype=x.dtype) + 0.5
    inside_y = (coords >= corner[:, :1]) & (coords < corner[:, :1] + size.unsqueeze(1))
    inside_x = (coords >= corner[:, 1:]) & (coords < corner[:, 1:] + size.unsqueeze(1))
    mask = (inside_y.unsqueeze(2) & inside_x.unsqueeze(1)).unsqueeze(1)
    x = torch.where(mask, fill.view(b, 1, 1, 1).to(x.dtype), x)
    # Contrast and brightness.
    c = 1.0 - s * cfg.contrast * (0.75 + 0.25 * _uniform((b,), generator, dev))
    offset = torch.rand((b,), generator=generator, device=dev) * (1.0 - c)
    x = c.view(b, 1, 1, 1) * x + offset.view(b, 1, 1, 1)
    # Noise.
    noise = torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype)
    x = x + (s * cfg.noise).view(b, 1, 1, 1) * noise
    return x.clamp(0.0, 1.0)


@register_task("recognition", RecognitionConfig)
class RecognitionTask(Task):
    """Classify grey images; loss cross-entropy; metric accuracy in percent.

    Inputs ``{"image": (B, 1, S, S)}`` in [0, 1], targets class indices ``(B,)``, groups
    the severity level of each image (see the module doc; ``"all"`` without
    corruptions). The base split is a seeded, per-class (stratified) shuffle of the
    whole data set, fixed by the task seed.
    """

    name = "recognition"
    metric_name = "accuracy (%)"
    higher_is_better = True
    group_title = "severity"
    default_predictor = "sdn"
    env_id = "l2s/Recognition-v1"

    def __init__(self, cfg: RecognitionConfig, seed: int = 0, device: str = "cpu") -> None:
        super().__init__(seed, device)
        self.cfg = cfg
        self.severities = list(cfg.severities)
        self.group_names = [f"{s:g}" for s in self.severities] if self.severities else ["all"]
        if not self.severities:
            self.group_title = "set"
        if cfg.data_dir:
            images, labels, self.class_names = class_folder_images(
                cfg.data_dir, cfg.image_size, "task"
            )
        else:
            from sklearn.datasets import load_digits

            digits = load_digits()
            images = digits.images.astype(np.float32) / 16.0
            labels = digits.target.astype(np.int64)
            self.class_names = [str(c) for c in range(10)]
        self.num_classes = len(self.class_names)
        x = torch.from_numpy(images).unsqueeze(1)
        if x.shape[-1] != cfg.image_size or x.shape[-2] != cfg.image_size:
            size = (cfg.image_size, cfg.image_size)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False).clamp(0, 1)
        self.image_size = int(x.shape[-1])
        split = self._split(labels)
        for name, idx in split.items():
            if len(idx) == 0:
                raise ConfigError(
                    f"task.data_dir: too few images ({len(labels)}) for a non-empty {name} split"
                )
        y = torch.from_numpy(labels)
        self.data = {
            name: (x[idx].to(self.device), y[idx].to(self.device)) for name, idx in split.items()
        }
        """The base (uncorrupted) images and labels of each split."""

    def _split(self, labels: np.ndarray) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(self.seed)
        parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
        for c in np.unique(labels):
            idx = rng.permutation(np.nonzero(labels == c)[0])
            n_test = int(round(self.cfg.test_fraction * len(idx)))
            n_val = int(round(self.cfg.val_fraction * len(idx)))
            parts["test"].append(idx[:n_test])
            parts["val"].append(idx[n_test : n_test + n_val])
            parts["train"].append(idx[n_test + n_val :])
        return {k: torch.from_numpy(np.sort(np.concatenate(v))) for k, v in parts.items()}

    def _level_of(self, severity: Tensor) -> Tensor:
        """The index of the listed severity nearest to each ``severity``."""
        levels = torch.tensor(self.severities, device=severity.device, dtype=severity.dtype)
        return (severity.unsqueeze(1) - levels).abs().argmin(dim=1)

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        x, y = self.data["train"]
        idx = torch.randint(x.shape[0], (batch_size,), generator=generator, device=self.device)
        images, targets = x[idx], y[idx]
        groups = torch.zeros_like(targets)
        if self.severities:
            top = max(self.severities)
            severity = torch.rand((batch_size,), generator=generator, device=self.device) * top
            images = corrupt(images, severity, self.cfg, generator)
            groups = self._level_of(severity)
        if self.cfg.train_noise > 0:
            noise = torch.randn(images.shape, generator=generator, device=self.device)
            images = images + self.cfg.train_noise * noise
        return Batch({"image": images}, targets, groups)

    def make_eval_set(self, split: str) -> Batch:
        x, y = self.data[split]
        if not self.severities:
            return Batch({"image": x}, y, torch.zeros_like(y))
        per = self.cfg.val_per_severity if split == "val" else self.cfg.test_per_severity
        # Drawn on the CPU and then moved, so that the set is the same on every device.
        gen = self.generator(1 if split == "val" else 2, device="cpu")
        x, y = x.cpu(), y.cpu()
        n = x.shape[0]
        # Each level cycles through a fresh permutation of the split's base images, so that
        # every base image appears about equally often at every severity.
        rounds = math.ceil(per / n)
        index = torch.cat(
            [
                torch.cat([torch.randperm(n, generator=gen) for _ in range(rounds)])[:per]
                for _ in self.severities
            ]
        )
        groups = torch.arange(len(self.severities)).repeat_interleave(per)
        levels = torch.tensor(self.severities, dtype=x.dtype)
        images = corrupt(x[index], levels[groups], self.cfg, gen)
        dev = self.device
        return Batch({"image": images.to(dev)}, y[index].to(dev), groups.to(dev))

    def loss(self, prediction: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(prediction, targets, reduction="none")

    def metric_stat(self, prediction: Tensor, targets: Tensor) -> Tensor:
        return (prediction.argmax(dim=1) == targets).float() * 100.0
