"""CIFAR-10 read from the standard local batch files (never downloads).

Both distributions of the data set are read: the "python version" (``data_batch_1`` ..
``data_batch_5``, ``test_batch``: pickled dicts) and the "binary version" (``data_batch_1.bin``
.. ``test_batch.bin``: rows of one label byte and 3,072 pixel bytes). A pickle can run code when
it is loaded, so the python batches go through an unpickler that builds only what a CIFAR batch
holds (dicts, lists, bytes, numbers and numpy arrays) and refuses any other global: a file that
names one is reported as not a CIFAR-10 batch, and nothing in it runs.
"""

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
_BIN_FOLDER = "cifar-10-batches-bin"
_ROW = 1 + 3 * 32 * 32  # the binary version: a label byte, then the R, G, B planes of 32 x 32
#: the only globals a CIFAR-10 python batch needs (numpy's array reconstruction)
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
}


class _BatchUnpickler(pickle.Unpickler):
    """Builds plain data and numpy arrays; any other global is refused, so nothing runs."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")


def _batch_dir(root: Path, files: tuple[str, ...]) -> tuple[Path, bool]:
    """The folder holding ``files`` and whether it holds the binary version (``<file>.bin``)."""
    for cand in (root, root / _FOLDER, root / _BIN_FOLDER):
        if all((cand / f).is_file() for f in files):
            return cand, False
        if all((cand / f"{f}.bin").is_file() for f in files):
            return cand, True
    where = root if (root / files[0]).is_file() or not (root / _FOLDER).is_dir() else root / _FOLDER
    missing = [f for f in files if not (where / f).is_file()]
    raise ConvscopeError(
        f"CIFAR-10 batch files missing in {where}: {', '.join(missing)}. convscope never "
        "downloads data: get the 'CIFAR-10 python version' archive (cifar-10-python.tar.gz) or "
        "the binary version (cifar-10-binary.tar.gz), extract it, and pass the folder that holds "
        f"'{_FOLDER}' or '{_BIN_FOLDER}' (or that folder itself) as root."
    )


def _load_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _ROW:
        raise ConvscopeError(
            f"CIFAR-10 binary batch {path} holds {raw.size} bytes, not a whole number of "
            f"{_ROW}-byte rows (a label byte and 3072 pixels): re-extract cifar-10-binary.tar.gz.")
    rows = raw.reshape(-1, _ROW)
    labels = rows[:, 0].astype(np.int64)
    if int(labels.max()) > 9:
        raise ConvscopeError(f"CIFAR-10 binary batch {path} has labels above 9: it is not a "
                             "CIFAR-10 batch (CIFAR-100's binary rows hold two label bytes).")
    return rows[:, 1:], labels


def _load(path: Path) -> dict:
    try:
        with path.open("rb") as fh:
            return _BatchUnpickler(fh, encoding="bytes").load()
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
        folder, binary = _batch_dir(root, files)
        data, labels = [], []
        for f in files:
            if binary:
                xb, yb = _load_bin(folder / f"{f}.bin")
                data.append(xb)
                labels.append(yb)
                continue
            d = _load(folder / f)
            if not isinstance(d, dict):
                raise ConvscopeError(f"CIFAR-10 batch {folder / f} holds a {type(d).__name__}, "
                                     "not a dict: it is not a CIFAR-10 python batch. "
                                     "Re-extract cifar-10-python.tar.gz.")
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
        meta_txt = folder / "batches.meta.txt"  # the binary version: one name per line
        got = None
        if binary and meta_txt.is_file():
            got = [ln.strip() for ln in meta_txt.read_text(errors="replace").splitlines()
                   if ln.strip()]
        elif not binary and meta.is_file():
            m = _load(meta)
            got = _get(m, "label_names") if isinstance(m, dict) else None
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


