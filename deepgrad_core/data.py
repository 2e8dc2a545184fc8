"""Data pipeline: CIFAR-10, Fashion-MNIST and a synthetic set as uint8 tensors, batched on the device.

``load_split`` returns a whole split as one uint8 ``ImageSplit`` on the CPU (the data sets studied
here fit in memory many times over); ``deepgrad_core.loader.DeviceLoader`` batches it on the
training device.

Where the data come from (``root`` defaults to ``default_data_root()``):

- ``cifar10``: ``<root>/cifar10/{train,test}/<class>/*.jpg|png`` (ImageFolder layout); else
  torchvision's ``<root>/cifar-10-batches-py``. A subset decodes only its own images (150 per class: a
  second, not the 34 s of all 50,000); a whole split is decoded once into the cache folder
  (``cache_dir``: ``$DEEPGRAD_CACHE_DIR``, else ``~/.deepgrad/cache``; the server uses its data dir's
  ``cache/``), never into the data root, which may be read-only or shared. The cache keeps at most
  ``$DEEPGRAD_CACHE_MAX_GIB`` (default 2) GiB, dropping the least recently used files first.
- ``fashion_mnist``: the idx files in ``<root>/fashion_mnist/``, ``<root>/FashionMNIST/raw/``
  (torchvision) or ``/usr/share/datasets/fashion-mnist/`` (Debian's ``dataset-fashion-mnist``).
- ``synthetic``: generated from the seed, for fast tests.

Normalization statistics are fixed constants of the full training sets (CIFAR-10, padded
Fashion-MNIST), or computed from the synthetic training split, so a subset run normalizes exactly
like a full run and the test split always uses training statistics.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import logging
import os
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from deepgrad_core.spec import DATASET_CHANNELS, DATASET_CLASSES, DEFAULT_IMAGE_SIDE, DataSpec, ExperimentSpec

log = logging.getLogger(__name__)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
# Per-channel statistics of the 50,000 CIFAR-10 training images (the values torchvision recipes use).
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
# Fashion-MNIST's 60,000 training images *after* the 2-pixel zero padding (0.2860 / 0.3530 unpadded).
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2190,), (0.3318,)
SYSTEM_FASHION_MNIST_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets/fashion-mnist"),)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SYNTHETIC_CLASSES = DATASET_CLASSES["synthetic"]
_CACHE_VERSION = 1

Split = Literal["train", "test"]
_Arrays = tuple[np.ndarray, np.ndarray, tuple[str, ...]]  # images [N, C, H, W], labels [N], classes


class DataError(RuntimeError):
    """A data set is missing or corrupt; the message names the paths looked at and how to fix it."""


@dataclasses.dataclass
class ImageSplit:
    """One split of a data set: uint8 images ``[N, C, H, W]``, int64 labels ``[N]``.

    ``mean`` and ``std`` are per channel on the 0..1 scale and always those of the training split.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {self.images.dtype} "
                             f"{list(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(f"labels must be int64 [{len(self.images)}], got {self.labels.dtype} "
                             f"{tuple(self.labels.shape)}")
        channels = self.images.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"mean/std need one value per channel ({channels}): {self.mean} / {self.std}")

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device | str) -> ImageSplit:
        """The same split with images and labels on ``device``."""
        return dataclasses.replace(self, images=self.images.to(device), labels=self.labels.to(device))


DEFAULT_CACHE_MAX_GIB = 2.0


def default_cache_dir() -> Path:
    """``$DEEPGRAD_CACHE_DIR`` if set, else ``~/.deepgrad/cache``."""
    env = os.environ.get("DEEPGRAD_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".deepgrad" / "cache"


def default_data_root() -> Path:
    """``$DEEPGRAD_DATA_ROOT`` if set, else ``~/.deepgrad/data``."""
    env = os.environ.get("DEEPGRAD_DATA_ROOT")
    return Path(env).expanduser() if env else Path.home() / ".deepgrad" / "data"


def load_split(spec: DataSpec, split: Split, *, root: str | os.PathLike[str] | None = None,
               in_channels: int = 3, seed: int = 0, download: bool = False,
               cache_dir: str | os.PathLike[str] | None = None) -> ImageSplit:
    """Load one split of ``spec.name`` on the CPU.

    ``spec.subset`` / ``spec.test_subset`` keep that many images per class, chosen at random
    (seeded by ``seed``) and kept in data-set order; a class with fewer images keeps all of them.
    ``download`` lets torchvision fetch CIFAR-10 / Fashion-MNIST into ``root`` when nothing is found.
    ``cache_dir``: where decoded whole splits are kept (default ``default_cache_dir()``).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    expected = DATASET_CHANNELS.get(spec.name)
    if expected is not None and in_channels != expected:
        raise ValueError(f"in_channels is {in_channels} but data set '{spec.name}' has {expected} channel(s)")
    per_class = spec.subset if split == "train" else spec.test_subset
    if spec.name == "synthetic":
        return _synthetic(spec, split, in_channels=in_channels, seed=seed)
    data_root = Path(root) if root is not None else default_data_root()
    pick = (lambda labels: select_per_class(labels, per_class, seed=seed, salt=split)) if per_class else None
    if spec.name == "cifar10":
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        images, labels, classes = _load_cifar10(data_root, split, download, pick, cache)
        mean, std = CIFAR10_MEAN, CIFAR10_STD
    else:
        images, labels = _load_fashion_mnist(data_root, split, download)
        classes, mean, std = FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD
        if pick is not None:
            keep = pick(labels)
            images, labels = images[keep], labels[keep]
    if spec.name == "fashion_mnist":
        # VGG halves the side five times: 28 -> 14 -> 7 -> 3 -> 1 -> 0 fails, 32 -> ... -> 1 works.
        images = np.pad(images, ((0, 0), (2, 2), (2, 2)))[:, None]
    images = np.require(images, requirements=["C", "W"])  # copies only a read-only or strided array
    return ImageSplit(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)), classes, mean, std)


def load_splits(spec: ExperimentSpec, root: str | os.PathLike[str] | None, train_data: ImageSplit | None = None,
                test_data: ImageSplit | None = None, *, cache_dir: str | os.PathLike[str] | None = None,
                ) -> tuple[ImageSplit, ImageSplit]:
    """Both splits, loaded unless passed in, each checked against the model's number of classes."""
    splits = []
    for name, given in (("train", train_data), ("test", test_data)):
        split = given if given is not None else load_split(spec.data, name, root=root, cache_dir=cache_dir,
                                                           in_channels=spec.model.in_channels, seed=spec.seed)
        if len(split.classes) != spec.model.num_classes:
            raise ValueError(f"model.num_classes is {spec.model.num_classes} but {name}_data has "
                             f"{len(split.classes)} classes")
        splits.append(split)
    return splits[0], splits[1]


def select_per_class(labels: np.ndarray, per_class: int, *, seed: int, salt: str = "") -> np.ndarray:
    """Sorted indices of ``per_class`` seeded random images of each class (all of a smaller class)."""
    keep = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) > per_class:
            rng = np.random.default_rng([seed, int(c), *salt.encode()])
            members = rng.choice(members, per_class, replace=False)
        keep.append(members)
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


# ---------------------------------------------------------------------------------------- CIFAR-10


def _load_cifar10(root: Path, split: Split, download: bool, pick: Callable[[np.ndarray], np.ndarray] | None,
                  cache_dir: Path) -> _Arrays:
    """The split, or the images ``pick(labels)`` selects of it (sorted indices)."""
    folder, batches = root / "cifar10" / split, root / "cifar-10-batches-py"
    if folder.is_dir():
        return _load_image_folder(folder, cache_dir, f"cifar10-{split}", pick)
    if batches.is_dir() or download:
        import torchvision  # slow to import; only this layout needs it

        try:
            ds = torchvision.datasets.CIFAR10(str(root), train=split == "train", download=download)
        except (RuntimeError, OSError) as err:
            raise DataError(f"CIFAR-10 in torchvision's layout at {batches} is unreadable ({err}); delete it "
                            f"and place torchvision's cifar-10-batches-py there again") from err
        images, labels = ds.data.transpose(0, 3, 1, 2), np.asarray(ds.targets, dtype=np.int64)
        if pick is not None:
            keep = pick(labels)
            images, labels = images[keep], labels[keep]
        return images, labels, tuple(ds.classes)
    raise DataError(f"CIFAR-10 not found: looked for {folder} (ImageFolder layout) and {batches} "
                    f"(torchvision's layout). Provide it with "
                    f"`python cifar10_jpeg.py imagefolder {root / 'cifar10'}`, or place torchvision's "
                    f"cifar-10-batches-py in {root}, or load with download=True.")


def _list_image_folder(folder: Path) -> tuple[list[Path], np.ndarray, tuple[str, ...], tuple[int, int]]:
    """Files sorted by class then name (like torchvision's ImageFolder), labels, classes, fingerprint."""
    class_dirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    classes = tuple(d.name for d in class_dirs)
    if classes != CIFAR10_CLASSES:
        raise DataError(f"{folder} must hold one folder per CIFAR-10 class {list(CIFAR10_CLASSES)}, "
                        f"found {list(classes)}")
    files: list[Path] = []
    labels: list[int] = []
    newest = max(d.stat().st_mtime_ns for d in class_dirs)
    for label, d in enumerate(class_dirs):
        entries = sorted((e for e in os.scandir(d) if e.name.lower().endswith(IMAGE_SUFFIXES)),
                         key=lambda e: e.name)
        if not entries:
            raise DataError(f"class folder {d} has no images ({', '.join(IMAGE_SUFFIXES)})")
        files += [Path(e.path) for e in entries]
        labels += [label] * len(entries)
        newest = max(newest, *(e.stat().st_mtime_ns for e in entries))
    return files, np.asarray(labels, dtype=np.int64), classes, (len(files), newest)


def _load_image_folder(folder: Path, cache_dir: Path, stem: str,
                       pick: Callable[[np.ndarray], np.ndarray] | None) -> _Arrays:
    """Decode an ImageFolder: only the images ``pick`` selects (no cache: that is fast), or all of them once,
    then from the cache while the folder is unchanged."""
    files, labels, classes, fingerprint = _list_image_folder(folder)
    if pick is not None:
        keep = pick(labels)
        start = time.perf_counter()
        images = _decode_all([files[i] for i in keep])
        log.info("decoded %d of %d images from %s in %.1f s", len(keep), len(files), folder,
                 time.perf_counter() - start)
        return images, labels[keep], classes
    key = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:12]
    cache = cache_dir / f"{stem}-{key}.npz"
    cached = _read_cache(cache, fingerprint)
    if cached is not None:
        return cached
    start = time.perf_counter()
    images = _decode_all(files)
    log.info("decoded %d images from %s in %.1f s", len(files), folder, time.perf_counter() - start)
    _write_cache(cache, images, labels, classes, fingerprint)
    return images, labels, classes


def _decode_image(path: Path) -> np.ndarray:
    """One 32x32 image as uint8 ``[3, 32, 32]``; a corrupt or odd-sized file is a ``DataError``."""
    try:
        with Image.open(path) as im:
            pixels = np.asarray(im.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as err:
        raise DataError(f"corrupt image {path}: {err}; replace or delete the file") from err
    if pixels.shape != (32, 32, 3):
        raise DataError(f"image {path} is {pixels.shape[1]}x{pixels.shape[0]}, CIFAR-10 images are 32x32")
    return pixels.transpose(2, 0, 1)


def _decode_all(files: list[Path]) -> np.ndarray:
    """Decode in a thread pool: Pillow releases the GIL while decoding, so threads scale."""
    out = np.empty((len(files), 3, 32, 32), dtype=np.uint8)
    chunks = [range(i, min(i + 256, len(files))) for i in range(0, len(files), 256)]

    def decode_chunk(chunk: range) -> None:
        for i in chunk:
            out[i] = _decode_image(files[i])

    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        for _ in pool.map(decode_chunk, chunks):  # re-raises the first DataError
            pass
    return out


def _read_cache(cache: Path, fingerprint: tuple[int, int]) -> _Arrays | None:
    if not cache.is_file():
        return None
    try:
        with np.load(cache) as z:
            if int(z["version"]) != _CACHE_VERSION or tuple(z["fingerprint"].tolist()) != fingerprint:
                log.info("cache %s is stale, decoding again", cache)
                return None
            arrays = z["images"], z["labels"].astype(np.int64), tuple(str(c) for c in z["classes"])
        os.utime(cache)  # recently used: the last to be dropped
        return arrays
    except (OSError, ValueError, KeyError, zlib.error) as err:  # a broken cache is rebuilt, not fatal
        log.warning("ignoring unreadable cache %s: %s", cache, err)
        return None


def _write_cache(cache: Path, images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...],
                 fingerprint: tuple[int, int]) -> None:
    tmp = cache.with_name(f"{cache.stem}.{os.getpid()}.tmp.npz")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, images=images, labels=labels, classes=np.asarray(classes),
                 fingerprint=np.asarray(fingerprint, dtype=np.int64), version=_CACHE_VERSION)
        os.replace(tmp, cache)  # atomic: a concurrent reader sees the old cache or the new one
    except OSError as err:  # an unwritable cache only costs the decode next time
        log.warning("could not write cache %s: %s", cache, err)
        tmp.unlink(missing_ok=True)
        return
    _bound_cache(cache.parent, keep=cache)


def _bound_cache(folder: Path, keep: Path) -> None:
    """Drop the least recently used cache files until the folder holds at most ``$DEEPGRAD_CACHE_MAX_GIB``."""
    limit = float(os.environ.get("DEEPGRAD_CACHE_MAX_GIB") or DEFAULT_CACHE_MAX_GIB) * 2**30
    try:
        files = sorted((f for f in folder.glob("*.npz") if f.is_file()), key=lambda f: f.stat().st_mtime)
        total = sum(f.stat().st_size for f in files)
        for old in files:
            if total <= limit:
                break
            if old != keep:
                total -= old.stat().st_size
                old.unlink(missing_ok=True)
                log.info("dropped cache file %s (cache over %.1f GiB)", old, limit / 2**30)
    except OSError as err:  # another process pruned it first
        log.debug("cache pruning: %s", err)


# ----------------------------------------------------------------------------------- Fashion-MNIST


def _load_fashion_mnist(root: Path, split: Split, download: bool) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    names = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    dirs = (root / "fashion_mnist", root / "FashionMNIST" / "raw", *SYSTEM_FASHION_MNIST_DIRS)
    found = _find_idx_pair(dirs, names)
    if found is None and download:
        import torchvision  # slow to import; only a download needs it

        try:
            torchvision.datasets.FashionMNIST(str(root), train=split == "train", download=True)
        except (RuntimeError, OSError) as err:
            raise DataError(f"downloading Fashion-MNIST into {root} failed: {err}") from err
        found = _find_idx_pair(dirs, names)
    if found is None:
        raise DataError(f"Fashion-MNIST ({names[0]}[.gz], {names[1]}[.gz]) not found in any of "
                        f"{', '.join(map(str, dirs))}. Install it with "
                        f"`apt-get install dataset-fashion-mnist`, place the idx files in {dirs[0]}, "
                        f"or load with download=True.")
    images, labels = _read_idx(found[0], ndim=3), _read_idx(found[1], ndim=1)
    if images.shape[1:] != (28, 28) or len(images) != len(labels) or labels.max(initial=0) >= 10:
        raise DataError(f"{found[0]} / {found[1]} do not hold Fashion-MNIST: images {images.shape}, "
                        f"{len(labels)} labels up to {labels.max(initial=0)}")
    return images, labels.astype(np.int64)


def _find_idx_pair(dirs: tuple[Path, ...], names: tuple[str, str]) -> tuple[Path, Path] | None:
    """The first folder holding both files (each plain or ``.gz``)."""
    for d in dirs:
        pair = [next((p for p in (d / n, d / f"{n}.gz") if p.is_file()), None) for n in names]
        if pair[0] is not None and pair[1] is not None:
            return pair[0], pair[1]
    return None


def _read_idx(path: Path, *, ndim: int) -> np.ndarray:
    """Parse an unsigned-byte idx file: magic ``0x0000080<ndim>``, ``ndim`` big-endian sizes, data."""
    try:
        raw = path.read_bytes()
        raw = gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"cannot read {path}: {err}; replace the file") from err
    header = 4 + 4 * ndim
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= header else -1
    if magic != 0x800 + ndim:
        raise DataError(f"{path} is not an idx file of {ndim}-d unsigned bytes (magic {magic:#x}, "
                        f"expected {0x800 + ndim:#x}); replace the file")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    if len(raw) != header + int(np.prod(dims)):
        raise DataError(f"{path} holds {len(raw) - header} bytes of data but its header promises {dims}; "
                        f"the file is truncated or corrupt")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


# --------------------------------------------------------------------------------------- synthetic


_TRAIN_STATS: OrderedDict[tuple[int, int, int, int], tuple[tuple[float, ...], tuple[float, ...]]] = OrderedDict()


def _synthetic(spec: DataSpec, split: Split, *, in_channels: int, seed: int) -> ImageSplit:
    """Class prototypes shared by both splits; noise and shifts drawn per split. Both splits are normalized
    with the training split's mean and std (kept for the test split: it need not draw the training one again)."""
    size = spec.image_size or DEFAULT_IMAGE_SIDE
    key = (size, in_channels, spec.subset or 100, seed)
    stats = _TRAIN_STATS.get(key) if split == "test" else None
    if stats is None:
        train = _synthetic_images(size, in_channels, spec.subset or 100, seed=seed, split="train")
        scaled = train.astype(np.float64) / 255.0
        stats = (tuple(float(m) for m in scaled.mean(axis=(0, 2, 3))),
                 tuple(float(s) for s in scaled.std(axis=(0, 2, 3))))
        _TRAIN_STATS[key] = stats
        while len(_TRAIN_STATS) > 32:
            _TRAIN_STATS.popitem(last=False)
    mean, std = stats
    images = train if split == "train" else _synthetic_images(size, in_channels, spec.test_subset or 20,
                                                              seed=seed, split="test")
    labels = np.repeat(np.arange(SYNTHETIC_CLASSES), len(images) // SYNTHETIC_CLASSES)
    classes = tuple(f"pattern_{c}" for c in range(SYNTHETIC_CLASSES))
    return ImageSplit(torch.from_numpy(images), torch.from_numpy(labels), classes, mean, std)


def _synthetic_images(size: int, channels: int, per_class: int, *, seed: int, split: Split) -> np.ndarray:
    """Each class: stripes at its own angle, frequency and colour, plus a blob at its own place.

    Every image is its class's pattern shifted by up to 2 pixels, plus Gaussian noise. The 25 shifted patterns
    of a class are drawn once and indexed per image (the same values as drawing each image's own, ~5x faster).
    """
    k, proto = SYNTHETIC_CLASSES, np.random.default_rng([seed, 0])
    angle = (np.arange(k) + proto.uniform(0, 0.3, k)) * np.pi / k  # one stripe orientation per class
    freq = proto.uniform(1.5, 3.0, k) / size  # cycles per pixel: smooth, low frequency
    phase = proto.uniform(0, 2 * np.pi, (k, channels))
    centre = proto.uniform(0.25 * size, 0.75 * size, (k, 2))
    rng = np.random.default_rng([seed, 1 if split == "train" else 2])
    out = np.empty((k * per_class, channels, size, size), dtype=np.uint8)
    grid = np.arange(size, dtype=np.float32)
    offsets = np.arange(-2, 3, dtype=np.float32)
    dy, dx = (a.reshape(-1, 1, 1) for a in np.meshgrid(offsets, offsets, indexing="ij"))  # the 25 shifts
    y, x = grid[None, :, None] - dy, grid[None, None, :] - dx  # [25, size, size]
    for c in range(k):
        shift = rng.integers(-2, 3, (per_class, 2))
        along = x * np.cos(angle[c]) + y * np.sin(angle[c])
        stripes = np.sin(2 * np.pi * freq[c] * along[:, None] + phase[c][None, :, None, None])
        blob = np.exp(-((y - centre[c, 0]) ** 2 + (x - centre[c, 1]) ** 2) / (0.02 * size**2))[:, None]
        patterns = 0.5 + 0.25 * stripes + 0.25 * blob  # [25, channels, size, size]
        pixels = rng.normal(0.0, 0.12, (per_class, channels, size, size))  # the noise, then in place:
        pixels += patterns[(shift[:, 0] + 2) * 5 + shift[:, 1] + 2]
        pixels *= 255.0
        pixels += 0.5
        np.clip(pixels, 0, 255, out=pixels)
        out[c * per_class:(c + 1) * per_class] = pixels  # to uint8, truncating as astype does
    return out
