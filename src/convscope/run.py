"""``cs.Run``: the user's handle on one run directory.

.. code-block:: python

    import convscope as cs

    with cs.Run(logdir="runs", config={"lr": 0.1}) as run:
        for step in range(1000):
            ...
            run.log_scalars(step, loss=loss, acc=acc)

Everything a run records lands under ``logdir/<name>/``; ``convscope serve --logdir runs`` shows
it in the browser, also while the run is still being written.
"""

from __future__ import annotations

import atexit
import math
import numbers
import os
import platform
import socket
import sys
import time
import weakref
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .errors import InvalidValueError, RunExistsError, StoreError
from .nn.dist import env_rank_world, rank_world
from .store.arrays import index_row, save_array
from .store.layout import (
    KEY_SCHEME,
    RUN_FILE,
    SCHEMA_VERSION,
    atomic_write_json,
    check_name,
    clean_orphans,
    hold_writer_lock,
    read_json,
)
from .store.objects import save_object
from .store.parts import compact_run
from .store.reader import RunReader
from .store.writer import PartWriter, writer_id

__all__ = ["Run", "default_run_name"]


def default_run_name() -> str:
    """A sortable timestamp plus a short random suffix: ``20261122-171135-3fa2``."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + os.urandom(2).hex()


def _dist_info() -> tuple[int, int]:
    """(rank, world size) from torch.distributed when initialised, else from the environment."""
    return env_rank_world()


_INT64 = (-(2**63), 2**63 - 1)


def _check_dtype(dtype: Any) -> np.dtype:
    """A numpy dtype an array can be stored as (``.npy`` without pickles), or
    InvalidValueError."""
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError) as exc:
        raise InvalidValueError(
            f"dtype {dtype!r} is not a numpy dtype ({exc}): pass e.g. np.float16, "
            "np.float32, 'float32' or 'uint8'."
        ) from exc
    if dt.hasobject or dt.kind == "V":
        raise InvalidValueError(
            f"dtype {dtype!r} cannot be stored without pickling: pass a numeric or bool dtype "
            "such as np.float32."
        )
    return dt


def _as_float(tag: str, value: Any) -> float:
    """A loggable scalar as float; NaN and inf are data and kept."""
    try:
        if hasattr(value, "detach") and hasattr(value, "numel"):  # torch tensor
            if value.numel() != 1:
                raise InvalidValueError(
                    f"scalar {tag!r} is a tensor of shape {tuple(value.shape)}: log one number "
                    f"(e.g. {tag}=t.mean()) or use run.log_array for arrays."
                )
            out = value.detach().item()
            if isinstance(out, numbers.Real):
                return float(out)
        elif isinstance(value, numbers.Real):  # int, float, bool, numpy scalars
            return float(value)
        elif hasattr(value, "shape") and getattr(value, "size", None) == 1:  # 1-elem numpy
            out = value.item()
            if isinstance(out, numbers.Real):
                return float(out)
    except OverflowError as exc:
        raise InvalidValueError(
            f"scalar {tag!r} = {value!r} is too large for a 64-bit float: log a value below "
            "about 1.8e308 (e.g. its logarithm), or float('inf') if it is meant to be infinite."
        ) from exc
    except (TypeError, ValueError, RuntimeError, NotImplementedError) as exc:
        raise InvalidValueError(
            f"scalar {tag!r} cannot be read as a number ({type(exc).__name__}: {exc}): log a "
            "real number, e.g. a Python float or a one-element CPU tensor."
        ) from exc
    raise InvalidValueError(
        f"scalar {tag!r} = {value!r} is a {type(value).__name__}, not a number: "
        "log_scalars takes ints, floats, bools, numpy scalars or one-element tensors."
    )


class Run:
    """One run = one directory under ``logdir``.

    Args:
        logdir: the parent directory of all runs (``convscope serve --logdir`` shows it).
        name: the run's directory name; default: a sortable timestamp and a random suffix.
        config: a JSON-serialisable dict saved in ``run.json`` (hyper-parameters etc.).
        resume: open an existing run and append to it instead of raising
            :class:`~convscope.errors.RunExistsError`.
        rank: this process's rank; default: torch.distributed's rank, else ``$RANK``, else 0.
            Rank 0 writes ``run.json``; every rank writes its own table parts.
        flush_interval: seconds a logged row may wait in memory before it is written (so the
            dashboard sees a live run); ``flush()`` and ``close()`` write everything at once.
        quiet: hide progress bars of long recordings.
    """

    def __init__(
        self,
        logdir: str | os.PathLike[str] = "runs",
        name: str | None = None,
        *,
        config: Mapping[str, Any] | None = None,
        resume: bool = False,
        rank: int | None = None,
        flush_interval: float = 2.0,
        quiet: bool = False,
    ) -> None:
        dist_rank, world = _dist_info()
        self.rank = dist_rank if rank is None else int(rank)
        self.world_size = world
        self.quiet = quiet
        self.config = dict(config or {})
        if name is None:
            name = self._shared_default_name()
        self.name = check_name(name, "run name")
        self.logdir = Path(logdir).expanduser().resolve()
        self.path = self.logdir / self.name
        self._open_dir(resume)
        # held until close (or until the process dies): readers tell a live run from a dead one
        self._lock_fh = hold_writer_lock(self.path)
        self._writer = PartWriter(
            self.path, writer_id(self.rank), max_age_s=flush_interval
        )
        self._closed = False
        self._watchers: list[Any] = []
        self._validation: Any = None
        self._finalizer = weakref.finalize(
            self, _finish_unclosed, self._writer, self.path, self.rank, self._lock_fh)
        atexit.register(self._finalizer)

    # -- creation ----------------------------------------------------------------------------
    def _shared_default_name(self) -> str:
        name = default_run_name()
        torch = sys.modules.get("torch")
        if self.world_size > 1 and torch is not None and torch.distributed.is_initialized():
            box = [name]
            torch.distributed.broadcast_object_list(box, src=0)
            name = box[0]
        elif self.world_size > 1:
            raise StoreError(
                "several processes (WORLD_SIZE > 1) need one shared run name: pass "
                "Run(name=...) or initialise torch.distributed before creating the Run."
            )
        return name

    def _open_dir(self, resume: bool) -> None:
        run_file = self.path / RUN_FILE
        if self.rank != 0:
            deadline = time.monotonic() + 120
            while not run_file.exists():
                if time.monotonic() > deadline:
                    raise StoreError(
                        f"rank {self.rank} waited 120 s for rank 0 to create {self.path}: "
                        "start rank 0 too, with the same logdir and name."
                    )
                time.sleep(0.05)
            return
        if self.path.exists() and any(self.path.iterdir()):
            if not resume:
                raise RunExistsError(
                    f"run {self.name!r} already exists in {self.logdir}: choose another name, "
                    "leave name=None for a fresh one, or pass resume=True to append to it."
                )
            if not run_file.exists():
                raise StoreError(
                    f"{self.path} exists but is not a convscope run (no run.json): "
                    "choose another name or logdir."
                )
            meta = read_json(run_file)
            meta.setdefault("resumed", []).append(_now())
            meta.pop("ended", None)
            meta["status"] = "running"
            meta["host"], meta["pid"] = socket.gethostname(), os.getpid()
            # what killed writers left: temporary files of dead processes
            clean_orphans(self.path, recursive=True)
            if self.config:
                meta["config"] = {**meta.get("config", {}), **self.config}
            atomic_write_json(run_file, meta)
            return
        self.path.mkdir(parents=True, exist_ok=True)
        torch = sys.modules.get("torch")
        meta = {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "created": _now(),
            "created_unix": time.time(),
            "convscope_version": __version__,
            "torch_version": getattr(torch, "__version__", None) if torch else _torch_version(),
            "python_version": platform.python_version(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "world_size": self.world_size,
            "status": "running",
            "key_scheme": KEY_SCHEME,
            "config": self.config,
        }
        atomic_write_json(run_file, meta)

    # -- logging -----------------------------------------------------------------------------
    def log_scalars(
        self, step: int, values: Mapping[str, Any] | None = None, /, **kwargs: Any
    ) -> None:
        """Record named numbers at ``step``: ``run.log_scalars(10, loss=0.3, acc=0.9)``.

        Accepts ints, floats, bools, numpy scalars and one-element tensors; NaN and inf are kept
        (they are data). A non-numeric value raises :class:`InvalidValueError`.
        """
        items = {**dict(values or {}), **kwargs}
        if not items:
            return
        step = self._check_step(step)
        tags = []
        vals = []
        for tag, v in items.items():
            if not isinstance(tag, str) or not tag:
                raise InvalidValueError(f"scalar names must be non-empty strings, got {tag!r}.")
            try:
                tag.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidValueError(
                    f"scalar name {tag!r} is not valid text ({exc.reason}): use a name without "
                    "lone surrogate characters."
                ) from exc
            tags.append(tag)
            vals.append(_as_float(tag, v))
        from .formats import scalars

        # every value checked above: the writer need not convert them again to check them
        self._writer.append(scalars.TABLE, scalars.rows(step, tags, vals, time.time()),
                            types=scalars.TYPES)

    def log_rows(self, table: str, columns: Mapping[str, Any]) -> None:
        """Append rows to any table: a mapping of column name to equal-length sequences."""
        self._writer.append(table, columns)

    def log_array(
        self,
        kind: str,
        key: str,
        value: Any,
        *,
        step: int | None = None,
        meta: Mapping[str, Any] | None = None,
        dtype: Any = None,
    ) -> Path:
        """Store an n-d array (tensor or numpy) as ``arrays/<kind>/<key>.npy``; returns its path.

        ``dtype``: a numpy dtype to store it as (e.g. ``np.float16``); ``step``: an integer."""
        if step is not None:
            step = self._check_step(step)
        if dtype is not None:
            dtype = _check_dtype(dtype)
        path, arr = save_array(self.path, kind, key, value, dtype=dtype)
        self._writer.append("arrays", index_row(kind, key, arr, step, meta))
        return path

    def log_object(self, kind: str, key: str, obj: Any) -> Path:
        """Store a JSON-serialisable document as ``objects/<kind>/<key>.json``; returns its path."""
        return save_object(self.path, kind, key, obj)

    # -- model structure, resources, feature maps, embeddings ---------------------------------
    def log_model(
        self,
        model: Any,
        example_inputs: Any,
        *,
        key: str = "model",
        profile: bool = True,
        backward: bool = True,
        repeat: int | None = None,
        threads: int | None = None,
        quiet: bool | None = None,
    ) -> tuple[Any, Any]:
        """Record the model's graph and per-layer profile (time, memory). Shown on the Model
        and Resources pages.

        Budget: 60 s for a ResNet-50 at 224² with 8 images on a 2-core CPU (see
        docs/model.md, "Budgets and defaults"). One forward and backward pass is timed first;
        a profile projected to take more than twice the budget warns before it starts
        (:class:`~convscope.nn.budget.BudgetWarning`), naming ``repeat=``, ``backward=False``
        and ``profile=False``.

        Args:
            model: the network.
            example_inputs: a batch ``[B, C, H, W]`` to trace and time.
            key: the name the graph and profile are stored under.
            profile: also time every layer and measure its memory.
            backward: include the backward pass in the profile.
            repeat: timed repetitions per layer (``None``: as many as fit the budget, 3 to 10,
                from the timed pass: 10 for a small model, 3 for a ResNet-50 at 224²).
            threads: CPU threads while profiling (``None``: torch's setting).
            quiet: hide the progress bar (``None``: the run's ``quiet``).

        Returns:
            ``(Graph, profile DataFrame or None)``.
        """
        from .record.structure import log_model

        return log_model(self, model, example_inputs, key=key, profile=profile,
                         backward=backward, repeat=repeat, threads=threads, quiet=quiet)

    def log_feature_maps(
        self,
        model: Any,
        images: Any,
        layers: Any = None,
        *,
        labels: Any = None,
        max_channels: int = 32,
        max_size: int = 32,
        quiet: bool | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Record the feature maps of a fixed set of sample images, stored as uint8 with a range
        per channel and a per-layer cap. Shown when a layer is clicked on the Model page.

        Args:
            model: the network.
            images: sample images ``[N, C, H, W]`` (stored too, as ``samples/feature_maps``).
            layers: the layers (any layer specification; ``None``: of the modules whose
                output is a 4-D map, every leaf and every block down to depth 2 when they are
                at most 48, else the blocks down to the deepest depth that keeps at most 48:
                ResNet-50 by stage and bottleneck, 25 layers; ConvNeXt-T by stage and block,
                37; see :func:`~convscope.record.structure.default_map_layers`).
            labels: ``[N]`` classes of the images, kept with them.
            max_channels: the most active channels kept per layer.
            max_size: the largest side kept (maps are shrunk by area averaging).
            quiet: hide the progress bar (``None``: the run's ``quiet``).

        Budget: 30 s for a ResNet-50 at 224² with 8 images on a 2-core CPU; a call projected
        to take more than twice that warns once, naming ``layers=``.

        Returns:
            per layer what was kept: original and stored shape, kept channels, their means.
        """
        from .record.structure import log_feature_maps

        return log_feature_maps(self, model, images, layers, labels=labels,
                                max_channels=max_channels, max_size=max_size, quiet=quiet)

    def log_embedding(
        self,
        features: Any,
        labels: Any = None,
        *,
        name: str = "features",
        images: Any = None,
        class_names: Any = None,
        k: int = 3,
    ) -> Any:
        """Record a PCA of ``features``. Shown on the Embedding page.

        Args:
            features: ``[N, D]`` (tensor or array), one row per item.
            labels: ``[N]`` classes (colours the points).
            name: the name the embedding is stored under.
            images: ``[N, C, H, W]`` images stored as hover thumbnails.
            class_names: names of the classes, in class order.
            k: principal components kept.

        Returns:
            the PCA result.
        """
        from .record.structure import log_embedding

        return log_embedding(self, features, labels, name=name, images=images,
                             class_names=class_names, k=k)

    # -- feature visualisation ---------------------------------------------------------------
    def log_preferred_inputs(
        self,
        model: Any,
        layers: Any,
        units: Any = None,
        *,
        max_units: int | None = None,
        seed: int = 0,
        steps: int | None = None,
        lr: float | None = None,
        size: int | tuple[int, int] | None = None,
        channels: int | None = None,
        objective: Any = "channel",
        regularizers: Any = None,
        transforms: Any = None,
        param: str | None = None,
        mean: Any = None,
        std: Any = None,
        batch_size: int | None = None,
        sharded: bool = False,
        method: str = "lucid",  # issue 15: Yosinski et al. 2015 by name
        quiet: bool | None = None,
        progress: Any = None,
        **maximize_options: Any,
    ) -> dict[str, Any]:
        """Activation maximisation of ``units`` of each layer, all units of a layer optimised
        as one batch (:func:`convscope.features.maximize`). Shown in the Model page's layer
        panel.

        Args:
            model: the network.
            layers: one layer or a list (module paths).
            units: channel indices (default: the first ``max_units`` channels of each layer).
            max_units: how many channels when ``units`` is None (``None``: 16, fewer where a
                step is too slow for the budget, see below).
            seed: base seed; unit ``u`` starts from :func:`convscope.features.unit_seed`
                ``(seed, u)``, so images do not depend on batching or sharding.
            steps, lr, size, channels, objective, regularizers, transforms, param, mean, std,
                batch_size: as for :func:`~convscope.features.maximize` (``None``: its
                default); ``size`` may be an int or ``(H, W)``. Two defaults fit the model
                instead: ``size=None`` renders at the model's input size with its longer side
                cut to 128 (a ResNet-50 renders at 128², not 224²), ``steps=None`` takes 256
                steps up to 64² and 128 above (a preset or ``render=`` keeps its own). Where a
                layer's step is so slow that these would not fit the budget (ViT-B at its
                fixed 224²), two timed steps measure it and the unset ``steps`` and
                ``max_units`` shrink to fit (not below 64 steps and 4 units); this is printed
                and stored with the images.
            sharded: under ``torch.distributed``, split the units across ranks (a collective:
                every rank calls it; rank 0 stores).
            method: ``"lucid"`` (default: lucent-style parameterisation and transforms) or
                ``"yosinski:N"`` (N = 1-4): Yosinski et al. 2015's plain gradient ascent on
                pixels with the paper's regulariser setting N (L2 decay, blur, small-norm and
                small-contribution clipping; :func:`convscope.features.yosinski`), which keeps
                its own steps and size; the stored settings name the method. Not together
                with ``regularizers=`` or ``render=``.
            quiet: hide the progress bar (``None``: the run's ``quiet``).
            progress: a callable ``progress(phase, done, total)`` told every optimisation
                step as ``("preferred inputs", steps done, steps in all)``
                (:data:`convscope.record.features.ProgressHook`); an exception it raises stops
                the call between steps (the layers finished before stay stored).
            **maximize_options: any other keyword of ``maximize`` (e.g. ``optimizer=``,
                ``max_lr=``, ``decorrelate=``, ``value_range=``, ``stop_early=``): an escape
                hatch for the options its render configuration adds.

        Budget: 120 s per layer (16 units at 128², 128 steps, ResNet-50, 2-core CPU). The
        first step of each layer projects the call; one projected at more than twice the
        budget warns once, naming ``steps=``, ``size=`` and ``max_units=``.

        Returns:
            ``{layer: images [U, C, H, W]}``.
        """
        from .record.features import log_preferred_inputs

        return log_preferred_inputs(
            self, model, layers, units, max_units=max_units, seed=seed, steps=steps, lr=lr,
            size=size, channels=channels, objective=objective, regularizers=regularizers,
            transforms=transforms, param=param, mean=mean, std=std, batch_size=batch_size,
            sharded=sharded, method=method, quiet=quiet, progress=progress, **maximize_options)

    def log_top_examples(
        self,
        model: Any,
        layers: Any,
        dataset: Any,
        k: int = 9,
        *,
        batch_size: int = 64,
        offset: int = 0,
        sharded: bool = False,
        quiet: bool | None = None,
        progress: Any = None,
    ) -> dict[str, Any]:
        """The ``k`` data-set images exciting each channel most, with receptive-field crops
        (one streaming pass per layer). Shown beside the preferred inputs on the Model page.

        Args:
            model: the network.
            layers: one layer or a list (module paths).
            dataset: a tensor ``[N, C, H, W]``, a map-style ``Dataset`` or (not sharded) an
                iterable of batches such as a ``DataLoader`` without shuffling.
            k: images kept per channel.
            batch_size: images per forward pass.
            offset: added to every data-set index.
            sharded: under ``torch.distributed``, split the data set across ranks (a
                collective: every rank calls it; rank 0 stores); the result equals one
                process's.
            quiet: hide the progress bar (``None``: the run's ``quiet``).
            progress: a callable ``progress(phase, done, total)`` told after every batch as
                ``("top examples", images ranked, images in all)``
                (:data:`convscope.record.features.ProgressHook`); an exception it raises stops
                the call between batches (the layers finished before stay stored).

        Budget: 20 s per layer plus 0.5 s per image per layer (ResNet-50 at 224², 2-core CPU).
        After the first layer the call is projected; one projected at more than twice the
        budget warns once, naming fewer layers and a subset of the data set.

        Returns:
            ``{layer: TopExamples}``.
        """
        from .record.features import log_top_examples

        return log_top_examples(self, model, layers, dataset, k, batch_size=batch_size,
                                offset=offset, sharded=sharded, quiet=quiet, progress=progress)

    # DeconvNet
    def log_projections(
        self,
        model: Any,
        layers: Any,
        dataset: Any,
        *,
        units: Any = None,
        max_units: int = 16,
        k: int = 9,
        batch_size: int = 64,
        seed: str = "activation",
        quiet: bool | None = None,
        progress: Any = None,
    ) -> dict[str, Any]:
        """DeconvNet projections (Zeiler & Fergus 2014, figure 2): the ``k`` data-set images
        exciting each unit most, each activation projected back to pixels
        (:func:`convscope.explain.project_unit`: switch unpooling, rectification, transposed
        filters), stored beside the images' receptive-field crops. Shown on the Model page for
        the unit picked in a layer's panel.

        Args:
            model: the network (eval mode; restored afterwards).
            layers: one layer or a list (module paths).
            dataset: a tensor ``[N, C, H, W]``, a map-style ``Dataset`` or an iterable of
                batches such as a ``DataLoader`` without shuffling.
            units: channel indices projected in every layer (default: the first
                ``max_units`` channels of each layer).
            max_units: how many channels when ``units`` is None.
            k: images per unit (Zeiler & Fergus show 9).
            batch_size: images per forward pass of the ranking pass.
            seed: ``"activation"`` (the paper: the unit's own activation is passed back) or
                ``"ones"`` (a unit impulse, what captum's ``Deconvolution`` computes).
            quiet: hide the progress bars (``None``: the run's ``quiet``).
            progress: a callable ``progress(phase, done, total)`` told ``("ranking", images
                ranked, images in all)`` after every batch of the ranking passes, then
                ``("projections", units projected, units in all)``
                (:data:`convscope.record.features.ProgressHook`); an exception it raises stops
                the call (a layer is stored whole or not at all).

        Budget: 90 s per layer plus 0.5 s per image per layer (ResNet-50 at 224², 16 units,
        2-core CPU); one projected at more than twice the budget warns once, naming
        ``max_units=``, fewer layers and a subset of the data set.

        Returns:
            ``{layer: Projections}`` (:class:`convscope.formats.projections.Projections`).
        """
        from .record.projections import log_projections

        hook = {} if progress is None else {"progress": progress}  # None: the default
        return log_projections(self, model, layers, dataset, units=units, max_units=max_units,
                               k=k, batch_size=batch_size, seed=seed, quiet=quiet, **hook)

    def log_cnnvis(  # CNNVis
        self,
        model: Any,
        dataset: Any,
        layers: Any = None,
        *,
        clusters: Any = None,
        by: str = "auto",
        influence: str = "auto",
        influence_images: int = 4,
        batch_size: int = 64,
        seed: int = 0,
        key: str | None = None,
        quiet: bool | None = None,
    ) -> Any:
        """CNNVis (Liu et al. 2017): cluster the channels of a chain of layers by their
        responses over ``dataset`` and measure the influence between adjacent layers
        (:mod:`convscope.model.cnnvis`). Shown on the Model page: a clicked layer's clusters,
        the chain's cluster edges bundled by biclustering, the number of clusters changeable.

        Args:
            model: the network (eval mode; restored afterwards).
            dataset: a tensor ``[N, C, H, W]``, a map-style ``Dataset`` (with labels the
                channels are described per class, as CNNVis) or an iterable of batches.
            layers: the chain, in drawing order (``None``: the first 5 convolutions along the
                main path after the stem -- for a ResNet-18 the first stage and
                ``layer2.0.conv1``, see :func:`~convscope.record.cnnvis.default_cnnvis_layers`).
            clusters: clusters per layer: an int, ``None`` (chosen by the silhouette, 2 to
                12), or ``{layer: count}``.
            by: ``"class"``, ``"image"`` or ``"auto"`` (class when the data set has labels).
            influence: ``"weights"``, ``"gradient"`` or ``"auto"`` (the weights when the next
                layer is a convolution reading the layer directly, else the gradient).
            influence_images: images (the first of the data set) for the gradient influence.
            batch_size: images per forward pass.
            seed: the k-means seed.
            key: the view's name (``None``: ``"cnnvis"``; recording it again replaces it).
            quiet: hide the progress bars (``None``: the run's ``quiet``).

        Budget: 60 s for torchvision's ResNet-18 at 224² with 64 images on a 2-core CPU
        (measured once: 66 s on a busy machine); a call projected at more than twice that warns
        once.

        Returns:
            the :class:`~convscope.model.cnnvis.CNNVisGraph` (on the descriptors as stored).
        """
        from .record.cnnvis import log_cnnvis

        return log_cnnvis(self, model, dataset, layers, clusters=clusters, by=by,
                          influence=influence, influence_images=influence_images,
                          batch_size=batch_size, seed=seed, key=key, quiet=quiet)

    def log_cka(  # compare runs
        self,
        model: Any,
        other: Any,
        dataset: Any,
        *,
        layers: Any = None,
        other_layers: Any = None,
        label: str = "this run",
        other_label: str = "other",
        key: str = "cka",
        batch_size: int = 64,
        quiet: bool | None = None,
    ) -> Any:
        """Linear CKA (Kornblith et al. 2019) between every layer of ``model`` and every layer
        of ``other`` over ``dataset``: how alike their representations of the same images are
        (1: the same up to a rotation and a scale). ``other`` may be another checkpoint of the
        same network (how far training moved each layer), another network, or ``None``
        (``model`` against itself: which of its layers represent alike). The minibatch
        estimate of Nguyen et al. 2021 (:func:`convscope.embed.cka_matrix`). Shown as a layer
        x layer heatmap on the Compare page and by ``convscope compare``.

        Args:
            model, other: the two networks (eval mode during the pass; restored afterwards).
            dataset: a tensor ``[N, C, H, W]``, a map-style ``Dataset`` or an iterable of
                batches; the same images go through both models.
            layers, other_layers: the layers compared (default: every Conv2d and Linear).
            label, other_label: what the two models are, for the page ("epoch 1", ...).
            key: the matrix's name in the run (recording it again replaces it).
            batch_size: images per minibatch (at least 4).
            quiet: hide the progress bar (``None``: the run's ``quiet``).

        Returns:
            the :class:`~convscope.embed.CKAResult`.
        """
        from .record.cka import log_cka

        return log_cka(self, model, other, dataset, layers=layers, other_layers=other_layers,
                       label=label, other_label=other_label, key=key, batch_size=batch_size,
                       quiet=quiet)

    # -- checkpoints -------------------------------------------------------------------------
    def log_checkpoint(self, model: Any, key: str = "model", *, example_inputs: Any = None,
                       arch: Any = None) -> Path:
        """Save ``model`` so that the dashboard's Live page and ``convscope diagnose`` can run it
        later, in a form that loads without running code: its ``state_dict`` as
        ``checkpoints/<key>.state.pt`` plus ``checkpoints/<key>.arch.json`` naming the
        allow-listed builder that rebuilds it (convscope.zoo and torchvision models are
        recognised; ``arch=("torchvision.resnet50", {"num_classes": 10})`` names one, see
        :mod:`convscope.store.checkpoints`). A model no builder reproduces is also pickled,
        without its weights (they stay in ``.state.pt``: one copy), as ``checkpoints/<key>.pt``
        with a warning: loading that needs ``trust=True``.
        ``example_inputs`` records the input shape. Returns the path of the record."""
        from .formats import checkpoints
        from .track.watch import strip_wrapper

        return checkpoints.write(self, strip_wrapper(model), key,
                                 example_inputs=example_inputs, arch=arch)

    # -- diagnosis ---------------------------------------------------------------------------
    def log_diagnosis(
        self,
        model: Any,
        inputs: Any = None,
        *,
        key: str = "model",
        views: bool = True,
        batch_size: int | None = None,
        sharded: bool = False,
        layers: Any = None,
        params: Any = None,
        thresholds: Any = None,
        max_channels: int = 512,
        seed: int = 0,
        reference: Any = "auto",
        max_elements: int = 1 << 22,
        abstraction: Any = None,
        quiet: bool | None = None,
    ) -> Any:
        """Diagnose ``model`` on ``inputs`` (Wang & Li 2020: dead maps, low diversity,
        near-zero outputs, maps far from the input, wide uniform parameters, ...) and store the
        report with the data of each layer's dendrogram / grid / KDE view. Shown on the
        Diagnosis page.

        Args:
            model: the network; or a ready :class:`~convscope.diagnose.Report`, stored as is.
            inputs: one batch (:func:`convscope.diagnose.diagnose`), or a ``Dataset`` / loader
                / a tensor with ``batch_size`` whose every item is measured
                (:func:`convscope.diagnose.diagnose_dataset`).
            key: the name the report is stored under.
            views: also store the figures' data (of the first batch for a data set).
            batch_size: images per forward pass over a data set.
            sharded: under ``torch.distributed``, split the data set across ranks (a
                collective: every rank calls it; rank 0 stores).
            layers, params, thresholds, max_channels, seed: as for
                :func:`~convscope.diagnose.diagnose`.
            reference, max_elements: as for :func:`~convscope.diagnose.diagnose` (one batch
                only).
            abstraction: ``{layer: "low" | "high"}`` as for
                :func:`~convscope.diagnose.diagnose_dataset` (data sets only).
            quiet: hide the progress bar (``None``: the run's ``quiet``).

        Budget: 90 s for one batch of 8 ResNet-50 images at 224² on a 2-core CPU (plus 0.5 s
        per image of a data set); a call projected to take more than twice that warns once,
        naming ``views=False``, ``layers=`` and ``max_elements=``. About half the time of one
        batch goes to the views' density curves and dendrograms (``views=False`` skips them).

        Returns:
            the :class:`~convscope.diagnose.Report`.
        """
        from .record.diagnosis import log_diagnosis, store_report

        if hasattr(model, "findings") and hasattr(model, "to_dict"):
            store_report(self, model, key)
            return model
        options: dict[str, Any] = dict(layers=layers, params=params, thresholds=thresholds,
                                       max_channels=max_channels, seed=seed)
        if not (isinstance(reference, str) and reference == "auto"):
            options["reference"] = reference
        if max_elements != 1 << 22:
            options["max_elements"] = max_elements
        if abstraction is not None:
            options["abstraction"] = abstraction
        return log_diagnosis(self, model, inputs, key=key, views=views, batch_size=batch_size,
                             sharded=sharded, quiet=quiet, **options)

    # -- attribution -------------------------------------------------------------------------
    def log_attributions(
        self,
        model: Any,
        images: Any,
        *,
        labels: Any = None,
        masks: Any = None,
        methods: Any = None,
        target: Any = None,
        layer: Any = None,
        key: str = "samples",
        class_names: Any = None,
        score_cam_batch_size: int | None = None,
        batch_size: int = 64,
        sharded: bool = False,
        quiet: bool | None = None,
        score_cam_channels: int | str | None = "auto",
    ) -> dict[str, Any]:
        """Compute and store attribution maps of ``images`` with their quality metrics.
        Shown on the Attribution page.

        Args:
            model: the classifier.
            images: ``[B, C, H, W]``, a ``Dataset`` or a loader, explained ``batch_size`` at a
                time.
            labels: ``[B]`` true classes (default: from the data set's items).
            masks: ``[B, H, W]`` object masks: adds the pointing game.
            methods: any of saliency, deconvnet, guided_backprop, cam, grad_cam, grad_cam_pp,
                score_cam (``None``: all of
                :data:`~convscope.explain.dataset.ATTRIBUTION_METHODS`).
            target: the class to explain (``None``: the predicted class), as in
                :mod:`convscope.explain`.
            layer: the Grad-CAM / Grad-CAM++ / Score-CAM layer (default: chosen automatically).
            key: the name the set is stored under.
            class_names: names of the classes, in class order.
            score_cam_batch_size: masked images per Score-CAM forward pass (``None``: sized
                from a byte budget, at least 16).
            batch_size: images per pass.
            sharded: under ``torch.distributed``, split the images across ranks (a collective:
                every rank calls it; rank 0 stores).
            quiet: hide the progress bar (``None``: the run's ``quiet``).
            score_cam_channels: Score-CAM's ``channels=``: ``"auto"`` (exact up to 256
                channels, else the fast mode scoring 128 channels per image first and more
                while the map can still move), an int ``K`` (fast), or ``None`` (always
                exact). The mode that ran is stored with the set (``modes``).

        Returns:
            ``{method: maps [B, H, W]}``.
        """
        from .record.attribution import ATTRIBUTION_METHODS, log_attributions

        return log_attributions(
            self, model, images, labels=labels, masks=masks,
            methods=ATTRIBUTION_METHODS if methods is None else methods, target=target,
            layer=layer, key=key, class_names=class_names,
            score_cam_batch_size=score_cam_batch_size, score_cam_channels=score_cam_channels,
            batch_size=batch_size, sharded=sharded,
            quiet=self.quiet if quiet is None else bool(quiet))

    # -- training dynamics -------------------------------------------------------------------
    def watch(self, model: Any, every: int = 10, layers: Any = None, *, filters: bool = True,
              ranks: int | str = 0, background: bool | None = None,
              fused: bool | None = None) -> Any:
        """Record weight/gradient statistics of every conv and linear layer every ``every``
        training steps (a step = a forward pass in train mode with gradients on; the first is
        step 1), per layer and per filter, without making training wait. ``ranks``: which rank
        records (default 0) or ``"all"``. ``background``: compute the statistics of a CPU model
        in a worker thread (default: when torch leaves a core free; see
        :class:`~convscope.track.watch.Watcher`). ``fused``: one compiled pass per layer on the
        CPU (default: when a C compiler is there; :mod:`convscope.track.native`). Stop with
        :meth:`unwatch`. Shown on the Training page.
        """
        from .record.tracking import start_watch

        watcher = start_watch(self, model, every=every, layers=layers, filters=filters,
                              ranks=ranks, background=background, fused=fused)
        if watcher is not None:
            self._watchers.append(watcher)
        return watcher

    def unwatch(self, model: Any = None) -> None:
        """Remove the hooks of :meth:`watch` (of one model, or all), writing what they hold."""
        keep = []
        for w in self._watchers:
            if model is None or w.model is model:
                w.remove()
            else:
                keep.append(w)
        self._watchers = keep

    def log_validation(self, step: int, ids: Any, labels: Any, predictions: Any, *,
                       gather: bool = True) -> float:
        """Record per-image validation results at ``step``: ``ids``, ``labels`` ``[N]`` ints and
        ``predictions`` ``[N]`` class indices or ``[N, K]`` scores. Stored as a bitset per
        checkpoint; the Training page shows per-class error, class clusters and anomalies.

        Under ``torch.distributed`` with several processes every rank passes its share and
        must call this (it is a collective): the shares are gathered (``all_gather_object``),
        each id kept once (the padding repeats of a ``DistributedSampler`` are dropped) and only
        rank 0 writes, so the run holds the whole validation set once per step. Pass
        ``gather=False`` when one rank alone validates the whole set (it then writes as is).
        Returns the accuracy over the (gathered) images."""
        from .record.tracking import ValidationLog

        step = self._check_step(step)
        if gather:
            ids_a, labels_a, pred = ValidationLog.gather(ids, labels, predictions)
            r, w = rank_world()
            write = w == 1 or r == 0
        else:
            ids_a, labels_a, pred = ValidationLog.arrays(ids, labels, predictions)
            write = True
        if write:
            if self._validation is None:
                self._validation = ValidationLog(self)
            self._validation.log(step, ids_a, labels_a, pred)
        return float((pred == labels_a).mean()) if len(pred) else float("nan")

    def log_validation_images(self, images: Any, labels: Any = None, ids: Any = None) -> int:
        """Store small thumbnails of the validation images (the Training page shows them beside
        each image's correct/wrong strip over checkpoints; Liu et al. 2018). ``images``
        ``[N, C, H, W]`` (a tensor or numpy); ``ids``: the ids given to :meth:`log_validation`
        (default ``0 .. N-1``, the running index :meth:`validate` uses); ``labels`` ``[N]``
        keep the set balanced across classes. Bounded: at most 2,000 thumbnails of at most
        32 pixels a side. Returns the number stored."""
        import numpy as np

        from .formats.training import write_validation_thumbnails

        def arr(v: Any) -> Any:
            return v.detach().cpu().float().numpy() if hasattr(v, "detach") else np.asarray(v)

        x = arr(images)
        ids = np.arange(len(x)) if ids is None else arr(ids)
        return write_validation_thumbnails(self, ids, x, None if labels is None else arr(labels))

    def validate(self, step: int, model: Any, loader: Any, *, device: Any = None) -> float:
        """Run ``loader`` (yielding ``(images, labels)`` or ``(images, labels, ids)``) through
        ``model`` in eval mode and :meth:`log_validation` the results; ids default to the running
        index. Returns the accuracy over all ranks' images.

        Under ``torch.distributed`` every rank runs its own share (e.g. a loader with a
        ``DistributedSampler``; yield ids then, since running indices would repeat across ranks)
        and the results are gathered to rank 0, which writes them once."""
        import torch

        was_training = model.training
        model.eval()
        ids, labels, preds = [], [], []
        offset = 0
        dev = device or next((p.device for p in model.parameters()), torch.device("cpu"))
        try:
            with torch.no_grad():
                for batch in loader:
                    x, y = batch[0], torch.as_tensor(batch[1])
                    i = torch.as_tensor(batch[2]) if len(batch) > 2 else torch.arange(
                        offset, offset + len(y))
                    offset += len(y)
                    preds.append(model(x.to(dev)).argmax(dim=1).cpu())
                    labels.append(y.cpu())
                    ids.append(i.cpu())
        finally:
            model.train(was_training)
        empty = torch.zeros(0, dtype=torch.long)
        p = torch.cat(preds) if preds else empty
        y = torch.cat(labels) if labels else empty
        i = torch.cat(ids) if ids else empty
        return self.log_validation(step, i, y, p)

    @staticmethod
    def _check_step(step: Any) -> int:
        """The step as an int in the 64-bit range the tables store, or InvalidValueError."""
        if hasattr(step, "item") and callable(step.item):
            try:
                step = step.item()
            except (TypeError, ValueError, RuntimeError, NotImplementedError) as exc:
                raise InvalidValueError(
                    f"step must be one integer, got {step!r} ({exc}): pass e.g. an int or a "
                    "one-element CPU tensor."
                ) from exc
        if isinstance(step, bool) or not isinstance(step, numbers.Integral):
            if isinstance(step, float) and math.isfinite(step) and step.is_integer():
                step = int(step)
            else:
                raise InvalidValueError(f"step must be an integer, got {step!r}.")
        step = int(step)
        if not _INT64[0] <= step <= _INT64[1]:
            raise InvalidValueError(
                f"step {step} is outside the 64-bit integer range the run stores "
                f"({_INT64[0]} .. {_INT64[1]}): count steps from 0 (e.g. the batch index)."
            )
        return step

    # -- lifecycle ---------------------------------------------------------------------------
    def flush(self) -> None:
        """Block until everything logged so far is durable on disk."""
        self._writer.flush()

    def close(self, compact: bool = True, *, failed: bool = False) -> None:
        """Flush, merge small table parts (``compact``) and mark the run as ended (or failed)."""
        if self._closed:
            return
        self._closed = True
        for w in self._watchers:
            w.remove()
        self._watchers = []
        self._finalizer.detach()
        atexit.unregister(self._finalizer)
        written = False
        try:
            self._writer.close()
            written = True
            if compact:
                compact_run(self.path, min_parts=8)
        finally:  # a writer or compaction error still ends the run (and is raised)
            if self.rank == 0:
                _mark_ended(self.path, "failed" if failed or not written else "ended")
            if self._lock_fh is not None:
                self._lock_fh.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def reader(self) -> RunReader:
        """A :class:`RunReader` on this run (sees everything flushed so far)."""
        return RunReader(self.path)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(failed=exc_type is not None)

    def __repr__(self) -> str:
        return f"Run(name={self.name!r}, path={str(self.path)!r})"


def _mark_ended(path: Path, status: str, only_if_open: bool = False) -> None:
    try:
        meta = read_json(path / RUN_FILE)
        if only_if_open and meta.get("ended"):
            return
        meta["ended"] = _now()
        meta["status"] = status
        atomic_write_json(path / RUN_FILE, meta)
    except (OSError, ValueError):
        pass


def _finish_unclosed(writer: PartWriter, path: Path, rank: int, lock_fh: Any) -> None:
    """At exit (or when a never-closed Run is garbage-collected): write what is buffered, mark
    the run ended, release the writer lock. A process that is killed never gets here; its run
    then shows as "died" (see RunInfo.of)."""
    try:
        writer.close()
    except Exception:
        pass
    if rank == 0:
        _mark_ended(path, "ended", only_if_open=True)
    if lock_fh is not None:
        lock_fh.close()


def _now() -> str:
    return datetime.now(UTC).astimezone().isoformat(timespec="seconds")


def _torch_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("torch")
    except Exception:
        return None
