"""CIFAR-10 read from the standard local python-pickle batch files (never downloads)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConvscopeError

__all__ = ["CIFAR10", "CIFAR10_CLASSES"]

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
_TRAIN_FILES = tuple(f"data_batch_{k}" for k in range(1, 6))
_TEST_FILES = ("test_batch",)
_FOLDER = "cifar-10-batches-py"


def _batch_dir(root: Path, files: tuple[str, ...]) -> Path:
    for cand in (root, root / _FOLDER):
        if all((cand / f).is_file() for f in files):
            return cand
    where = root if (root / files[0]).is_file() or not (root / _FOLDER).is_dir() else root / _FOLDER
    missing = [f for f in files if not (where / f).is_file()]
    raise ConvscopeError(
        f"CIFAR-10 batch files missing in {where}: {', '.join(missing)}. convscope never "
        "downloads data: get the 'CIFAR-10 python version' archive (cifar-10-python.tar.gz), "
        f"extract it, and pass the folder that holds '{_FOLDER}' (or that folder itself) as root."
    )


def _load(path: Path) -> dict:
    try:
        with path.open("rb") as fh:
            return pickle.load(fh, encoding="bytes")
    except Exception as exc:  # noqa: BLE001 - report any unreadable file the same way
        raise ConvscopeError(
            f"Cannot read CIFAR-10 batch {path}: {exc}. Is it the python-pickle version of the "
            "data set? Re-extract cifar-10-python.tar.gz."
        ) from exc


def _get(d: dict, key: str):
    if key.encode() in d:
        return d[key.encode()]
    return d.get(key)


class CIFAR10(Dataset):
    """CIFAR-10 from local files (``data_batch_1..5``, ``test_batch``; python-pickle format).

    Args:
        root: a folder holding ``cifar-10-batches-py/``, or that folder itself.
        train: the 50,000 training images (True) or the 10,000 test images (False).
        transform: optional callable applied to each image tensor in ``__getitem__``.

    Items: ``(image, label)`` with ``image: [3, 32, 32]`` float32 in [0, 1] and ``label`` an int.
    :meth:`tensors` returns everything at once: ``images [N, 3, 32, 32]``, ``labels [N]``.
    Raises :class:`ConvscopeError` naming the missing files if the batches are not there; it never
    downloads.
    """

    def __init__(self, root: str | Path, train: bool = True, transform=None) -> None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise ConvscopeError(
                f"CIFAR-10 root {root} is not a folder. Pass the folder that holds "
                f"'{_FOLDER}' (extracted from cifar-10-python.tar.gz); convscope never downloads."
            )
        files = _TRAIN_FILES if train else _TEST_FILES
        folder = _batch_dir(root, files)
        data, labels = [], []
        for f in files:
            d = _load(folder / f)
            x, y = _get(d, "data"), _get(d, "labels")
            if y is None:
                y = _get(d, "fine_labels")
            if x is None or y is None:
                raise ConvscopeError(
                    f"CIFAR-10 batch {folder / f} has no 'data'/'labels' entries; it is not a "
                    "CIFAR-10 python batch. Re-extract cifar-10-python.tar.gz."
                )
            x = np.asarray(x, dtype=np.uint8)
            if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(y) != x.shape[0]:
                raise ConvscopeError(
                    f"CIFAR-10 batch {folder / f} has data of shape {x.shape} with {len(y)} labels;"
                    " expected [N, 3072] uint8 and N labels. Re-extract cifar-10-python.tar.gz."
                )
            data.append(x)
            labels.append(np.asarray(y, dtype=np.int64))
        self.data = torch.from_numpy(np.concatenate(data).reshape(-1, 3, 32, 32))  # uint8
        self.labels = torch.from_numpy(np.concatenate(labels))
        self.train = bool(train)
        self.transform = transform
        self.root = folder
        names = CIFAR10_CLASSES
        meta = folder / "batches.meta"
        if meta.is_file():
            m = _load(meta)
            got = _get(m, "label_names")
            if got is not None and len(got) == 10:
                names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in got)
        self.class_names: tuple[str, ...] = names

    def __len__(self) -> int:
        return int(self.labels.numel())

    def __getitem__(self, index: int):
        if not -len(self) <= int(index) < len(self):
            raise IndexError(f"CIFAR10 index {index} out of range for {len(self)} images.")
        img = self.data[int(index)].float().div_(255.0)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[int(index)])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``images [N, 3, 32, 32]`` float32 in [0, 1] and ``labels [N]`` int64 (no transform)."""
        return self.data.float().div_(255.0), self.labels.clone()

    def __repr__(self) -> str:
        return f"CIFAR10(root={str(self.root)!r}, train={self.train}, n={len(self)})"


