"""Image recognition (the paper's fourth family): classify images with a multi-exit CNN.

By default the data are scikit-learn's bundled handwritten digits (1797 grey 8x8
images, 10 classes) with a fixed seeded train/validation/test split; ``data_dir``
points at a folder of the user's own images in one sub-folder per class instead.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    """Parameters of the recognition task (default data: scikit-learn's 8x8 digits)."""

    data_dir: str = ""
    """A folder with one sub-folder of images per class, instead of the digits."""
    image_size: int = 32
    """Side to which ``data_dir`` images are resized (the digits stay 8x8)."""
    val_fraction: float = 0.15
    test_fraction: float = 0.25
    train_noise: float = 0.0
    """Std of Gaussian noise added to training images (augmentation; 0: off)."""

    def validate(self, path: str) -> None:
        positive(self, path, "image_size", "val_fraction", "test_fraction")
        non_negative(self, path, "train_noise")
        if self.image_size < 4:
            raise ConfigError(f"{path}.image_size: must be >= 4, got {self.image_size!r}")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ConfigError(
                f"{path}.test_fraction: val_fraction + test_fraction must leave at least 10% "
                f"for training, got {self.val_fraction} + {self.test_fraction}"
            )


@register_task("recognition", RecognitionConfig)
class RecognitionTask(Task):
    """Classify grey images; loss cross-entropy; metric accuracy in percent.

    Inputs ``{"image": (B, 1, S, S)}`` in [0, 1], targets class indices ``(B,)``. The
    split is a seeded, per-class (stratified) shuffle of the whole data set, fixed by the
    task seed. Training batches are drawn with replacement from the training split.
    One group, ``"all"``.
    """

    name = "recognition"
    metric_name = "accuracy (%)"
    higher_is_better = True
    group_title = "set"
    default_predictor = "sdn"
    env_id = "l2s/Recognition-v1"

    def __init__(self, cfg: RecognitionConfig, seed: int = 0, device: str = "cpu") -> None:
        super().__init__(seed, device)
        self.cfg = cfg
        self.group_names = ["all"]
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
        self.image_size = int(images.shape[-1])
        split = self._split(labels)
        for name, idx in split.items():
            if len(idx) == 0:
                raise ConfigError(
                    f"task.data_dir: too few images ({len(labels)}) for a non-empty {name} split"
                )
        x = torch.from_numpy(images).unsqueeze(1)
        y = torch.from_numpy(labels)
        self.data = {
            name: (x[idx].to(self.device), y[idx].to(self.device)) for name, idx in split.items()
        }

    def _split(self, labels: np.ndarray) -> dict[str, np.ndarray]:
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

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        x, y = self.data["train"]
        idx = torch.randint(x.shape[0], (batch_size,), generator=generator, device=self.device)
        images = x[idx]
        if self.cfg.train_noise > 0:
            noise = torch.randn(images.shape, generator=generator, device=self.device)
            images = images + self.cfg.train_noise * noise
        return Batch({"image": images}, y[idx], torch.zeros_like(y[idx]))

    def make_eval_set(self, split: str) -> Batch:
        x, y = self.data[split]
        return Batch({"image": x}, y, torch.zeros_like(y))

    def loss(self, prediction: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(prediction, targets, reduction="none")

    def metric_stat(self, prediction: Tensor, targets: Tensor) -> Tensor:
        return (prediction.argmax(dim=1) == targets).float() * 100.0
