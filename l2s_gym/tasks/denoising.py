"""Image denoising (the paper's third family): remove blind Gaussian noise from grey patches.

Clean grey patches are cut from whole images, and the images -- not the patches -- are
split between training, validation and test, so that test patches come from images the
model never saw. By default the images are the photographs bundled with scikit-image
and scikit-learn (nothing is downloaded); ``data_dir`` points at a folder of the user's
own images instead (e.g. the BSD sets).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from l2s_gym.config import ConfigError, positive
from l2s_gym.registry import register_task
from l2s_gym.task import Batch, Task

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".pgm", ".ppm")

# Bundled images, split by image. Training: scikit-image's photographs and textures;
# validation: two more scikit-image photographs; test: scikit-learn's two photographs.
BUNDLED_SPLITS: dict[str, list[str]] = {
    "train": [
        "camera",
        "astronaut",
        "coffee",
        "rocket",
        "moon",
        "text",
        "page",
        "brick",
        "grass",
        "gravel",
        "cell",
        "immunohistochemistry",
    ],
    "val": ["chelsea", "coins"],
    "test": ["sklearn:china.jpg", "sklearn:flower.jpg"],
}


def read_grey_image(path: Path) -> np.ndarray | None:
    """A grey ``(H, W)`` float32 image in ``[0, 1]``, or ``None`` if the file is unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def _to_grey(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.float32)
    elif image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    else:
        image = image.astype(np.float32)
    if image.ndim == 3:
        # Element-wise, in a fixed order: each product and sum is one rounding, the same on
        # every CPU. (A matrix product goes through BLAS, whose kernel, and so its last
        # bits, depend on the CPU's instruction set.)
        r, g, b = (image[..., c] for c in range(3))
        image = r * np.float32(0.2125) + g * np.float32(0.7154) + b * np.float32(0.0721)
    return np.clip(image, 0.0, 1.0)


@cache
def bundled_image(name: str) -> np.ndarray:
    """One bundled grey image by name (``"camera"``, ``"sklearn:china.jpg"``, ...)."""
    if name.startswith("sklearn:"):
        from sklearn.datasets import load_sample_image

        return _to_grey(load_sample_image(name.split(":", 1)[1]))
    import skimage.data

    return _to_grey(getattr(skimage.data, name)())


def folder_images(data_dir: str, path: str) -> list[tuple[str, np.ndarray]]:
    """Every readable image in ``data_dir`` (sorted by name) as grey arrays.

    Raises ``ConfigError`` naming the problem: the folder is missing, or holds no
    readable image.
    """
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{path}.data_dir: no such folder {str(folder)!r}")
    images = []
    for file in sorted(folder.iterdir()):
        if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES:
            image = read_grey_image(file)
            if image is not None:
                images.append((file.name, image))
    if not images:
        raise ConfigError(
            f"{path}.data_dir: no readable images ({', '.join(IMAGE_SUFFIXES)}) in {str(folder)!r}"
        )
    return images


def cut_patches(image: np.ndarray, size: int, stride: int) -> np.ndarray:
    """All ``size x size`` patches of ``image`` on a ``stride`` grid, ``(N, size, size)``."""
    h, w = image.shape
    rows = range(0, h - size + 1, stride)
    cols = range(0, w - size + 1, stride)
    return np.stack([image[r : r + size, c : c + size] for r in rows for c in cols])


@dataclass
class DenoisingConfig:
    """Parameters of the denoising task (the paper: 40x40 patches, sigma in {35, 45, 55})."""

    data_dir: str = ""
    """A folder of images (png, jpg, ...) to use instead of the bundled ones; split by image
    (about 70% train, 15% validation, 15% test; at least one image each)."""
    patch_size: int = 40
    train_sigmas: list[float] = field(default_factory=lambda: [35.0, 45.0, 55.0])
    """Noise levels (0-255 scale) of training and validation; each patch draws one."""
    test_sigmas: list[float] = field(default_factory=lambda: [35.0, 45.0, 55.0, 65.0, 75.0])
    """Noise levels of the test set; every test patch is scored at each of them."""
    val_size: int = 512
    """Validation patches (from the validation images, noise levels from ``train_sigmas``)."""
    test_patches: int = 256
    """Clean test patches; the test set holds each of them at every test noise level."""
    loss: Literal["mse", "psnr"] = "mse"
    """The per-sample loss. ``mse``: ``loss_scale * MSE`` on a [0, 1] intensity scale (25 dB
    PSNR is a loss of about 3.2). ``psnr``: minus the patch's PSNR in dB,
    ``10 log10(MSE)``, the metric itself: the oracle, stage 1 and the layer price are then
    in dB, and every noise level weighs the same (under ``mse`` a patch at sigma 75 has a
    loss ~50 times one at sigma 10, so one ``beta`` cannot suit both)."""
    loss_scale: float = 1000.0
    """Scale of the ``mse`` loss. ``beta`` must be large enough against the loss gaps between
    layers (1 to 3 at this scale) or the oracle stage trains only a few layers."""

    def validate(self, path: str) -> None:
        positive(self, path, "patch_size", "val_size", "test_patches", "loss_scale")
        if self.patch_size < 8:
            raise ConfigError(f"{path}.patch_size: must be >= 8, got {self.patch_size!r}")
        for key in ("train_sigmas", "test_sigmas"):
            values = getattr(self, key)
            if not values:
                raise ConfigError(f"{path}.{key}: must list at least one noise level")
            if any(s <= 0 or s > 255 for s in values):
                raise ConfigError(f"{path}.{key}: noise levels must be in (0, 255], got {values}")


@register_task("denoising", DenoisingConfig)
class DenoisingTask(Task):
    """Blind Gaussian denoising of grey ``patch_size`` patches; metric PSNR in dB per noise level.

    Inputs ``{"noisy": (B, 1, P, P)}``, targets the clean patches ``(B, 1, P, P)`` in
    ``[0, 1]``; the noise is not clipped. Training draws patches at random from the
    training images (with a random flip / 90-degree rotation) and a noise level from
    ``train_sigmas``. Groups are the noise levels of ``train_sigmas`` and ``test_sigmas``
    together; the test set holds ``test_patches`` clean patches at every test level, so
    the levels absent from training (65 and 75 by default) show how the stop rule
    generalises. Loss: ``loss_scale * MSE``, or minus the PSNR (``loss: psnr``); metric:
    PSNR averaged over patches.
    """

    name = "denoising"
    metric_name = "PSNR (dB)"
    higher_is_better = True
    group_title = "noise sigma"
    default_predictor = "dncnn"
    env_id = "l2s/Denoising-v1"

    def __init__(self, cfg: DenoisingConfig, seed: int = 0, device: str = "cpu") -> None:
        super().__init__(seed, device)
        self.cfg = cfg
        self.sigmas = sorted(set(cfg.train_sigmas) | set(cfg.test_sigmas))
        self.group_names = [f"sigma {s:g}" for s in self.sigmas]
        self._sigma = torch.tensor(self.sigmas, device=self.device) / 255.0
        self._train_groups = torch.tensor(
            [self.sigmas.index(s) for s in cfg.train_sigmas], device=self.device
        )
        self._test_groups = torch.tensor(
            [self.sigmas.index(s) for s in cfg.test_sigmas], device=self.device
        )
        images = self._split_images()
        p = cfg.patch_size
        # Overlapping training patches (stride P/2) give more variety; evaluation
        # patches do not overlap, so no pixel is counted twice.
        self.patches = {
            split: torch.from_numpy(
                np.concatenate(
                    [cut_patches(im, p, max(p // 2, 1) if split == "train" else p) for im in ims]
                )
            )
            .unsqueeze(1)
            .to(self.device)
            for split, ims in images.items()
        }

    def _split_images(self) -> dict[str, list[np.ndarray]]:
        cfg, path = self.cfg, "task"
        if cfg.data_dir:
            named = folder_images(cfg.data_dir, path)
            if len(named) < 3:
                raise ConfigError(
                    f"{path}.data_dir: {len(named)} readable image(s) in {cfg.data_dir!r}; "
                    "at least 3 are needed to split train/validation/test by image"
                )
        else:
            named = [(n, bundled_image(n)) for names in BUNDLED_SPLITS.values() for n in names]
        small = [n for n, im in named if min(im.shape) < cfg.patch_size]
        if small:
            raise ConfigError(
                f"{path}.patch_size: {len(small)} image(s) smaller than the patch size "
                f"{cfg.patch_size} (e.g. {small[0]!r}); lower patch_size or remove them"
            )
        if not cfg.data_dir:
            by_name = dict(named)
            return {s: [by_name[n] for n in names] for s, names in BUNDLED_SPLITS.items()}
        # A user folder: a seeded shuffle of the images, ~70/15/15 by image.
        order = np.random.default_rng(self.seed).permutation(len(named))
        n_eval = max(1, round(0.15 * len(named)))
        idx = {
            "test": order[:n_eval],
            "val": order[n_eval : 2 * n_eval],
            "train": order[2 * n_eval :],
        }
        return {s: [named[i][1] for i in sorted(ix)] for s, ix in idx.items()}

    def _noisy(self, clean: Tensor, groups: Tensor, generator: torch.Generator) -> Batch:
        """``clean`` plus noise of the levels ``groups``, all on the generator's device."""
        sigma = self._sigma.to(generator.device)[groups].view(-1, 1, 1, 1)
        noise = torch.randn(clean.shape, generator=generator, device=generator.device)
        return Batch({"noisy": clean + sigma * noise}, clean, groups)

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        pool = self.patches["train"]
        dev = self.device
        idx = torch.randint(pool.shape[0], (batch_size,), generator=generator, device=dev)
        clean = pool[idx]
        # One of the 8 flips/rotations per batch: cheap augmentation, same on any device.
        k = int(torch.randint(8, (1,), generator=generator, device=dev))
        clean = torch.rot90(clean, k % 4, dims=(2, 3))
        if k >= 4:
            clean = clean.flip(3)
        which = torch.randint(
            len(self._train_groups), (batch_size,), generator=generator, device=dev
        )
        return self._noisy(clean, self._train_groups[which], generator)

    def make_eval_set(self, split: str) -> Batch:
        # Drawn on the CPU, then moved: the same set on every device.
        gen = self.generator(1 if split == "val" else 2, device="cpu")
        pool = self.patches[split].cpu()
        if split == "val":
            idx = torch.randint(pool.shape[0], (self.cfg.val_size,), generator=gen)
            which = torch.randint(len(self._train_groups), (self.cfg.val_size,), generator=gen)
            return self._noisy(pool[idx], self._train_groups.cpu()[which], gen).to(self.device)
        n = self.cfg.test_patches
        perm = torch.randperm(pool.shape[0], generator=gen)
        # Fewer distinct patches than asked: repeat them (with fresh noise).
        idx = perm.repeat(math.ceil(n / pool.shape[0]))[:n]
        clean = pool[idx].repeat(len(self._test_groups), 1, 1, 1)
        groups = self._test_groups.cpu().repeat_interleave(n)
        return self._noisy(clean, groups, gen).to(self.device)

    def loss(self, prediction: Tensor, targets: Tensor) -> Tensor:
        mse = (prediction - targets).pow(2).flatten(1).mean(1)
        if self.cfg.loss == "psnr":
            return 10.0 * torch.log10(mse.clamp_min(1e-10))
        return self.cfg.loss_scale * mse

    def metric_stat(self, prediction: Tensor, targets: Tensor) -> Tensor:
        mse = (prediction - targets).pow(2).flatten(1).mean(1)
        return -10.0 * torch.log10(mse.clamp_min(1e-10))

    def render(self, prediction: Tensor, inputs: dict[str, Tensor]) -> np.ndarray:
        """The noisy input (left) and the current estimate (right), grey, 4x enlarged."""
        pair = [inputs["noisy"][0], prediction[0]]
        grey = [np.clip(im.detach().float().cpu().numpy(), 0.0, 1.0) for im in pair]
        gap = np.ones((grey[0].shape[0], 2))
        picture = np.concatenate([grey[0], gap, grey[1]], axis=1)
        picture = np.kron(picture, np.ones((4, 4)))
        return np.repeat(np.rint(255 * picture).astype(np.uint8)[:, :, None], 3, axis=2)
