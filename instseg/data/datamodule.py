"""LightningDataModules for any COCO-format dataset, and for the generated shapes set.

Batches are `(images, targets)` lists as torchvision detection models take them (see
`instseg.data.coco`). The validation split's annotation file is the evaluation ground truth:
`val_coco` exposes it. `dataset_categories` are the json's categories; `categories` is the
model's label space, the same unless `use_label_space` set a wider one (pretrained weights).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property, partial
from pathlib import Path

import pytorch_lightning as pl
import torch
from pycocotools.coco import COCO
from torch.utils.data import DataLoader

from instseg.data.categories import CategoryMap
from instseg.data.coco import MAX_IMAGE_SIDE, CocoInstances, collate, load_checked
from instseg.data.copy_paste import CopyPaste
from instseg.data.samplers import (
    EpochSampler,
    GroupedBatchSampler,
    RepeatFactorSampler,
    ResumableBatchSampler,
    ResumableDataLoader,
    aspect_ratio_groups,
    repeat_factors,
)
from instseg.data.synthetic import generate_shapes
from instseg.data.transforms import evaluation_transforms, training_transforms
from instseg.data.validation import CheckedAnnotations
from instseg.data.workers import AUTO, resolve_num_workers, resolve_pin_memory
from instseg.utils.errors import InstsegError


class CocoDataModule(pl.LightningDataModule):
    """Train and val splits, each an image directory plus a COCO instances json.

    Relative paths are taken under `root` when it is given (e.g. the COCO 2017 layout).
    """

    def __init__(
        self,
        train_images: str,
        train_annotations: str,
        val_images: str,
        val_annotations: str,
        root: str | None = None,
        batch_size: int = 2,
        val_batch_size: int | None = None,
        num_workers: int | str = AUTO,
        train_transforms: Callable | None = None,
        val_transforms: Callable | None = None,
        pin_memory: bool | str = AUTO,
        group_aspect_ratio: bool = False,
        max_image_side: int = MAX_IMAGE_SIDE,
        copy_paste: CopyPaste | None = None,
        repeat_factor_threshold: float | None = None,
    ) -> None:
        """`max_image_side`: training images with a longer side are downscaled when read.
        `repeat_factor_threshold`: repeat-factor sampling of the training images with this
        threshold t (LVIS recipes: 0.001; instseg.data.samplers.repeat_factors), or None
        for each image once per epoch; under DDP each process trains on its share of every
        repeat-factor epoch (instseg.data.samplers.EpochShard).
        `train_transforms`: instseg.data.transforms.training_transforms(...) (default: a
        horizontal flip with probability 0.5); `copy_paste`: pasting between the training
        images of a batch (instseg.data.copy_paste), or None. `num_workers` / `pin_memory`:
        a number / bool, or "auto": from the trainer's device and the CPUs
        (instseg.data.workers), resolved when a loader is built."""
        super().__init__()
        base = Path(root) if root is not None else Path()
        self.paths = {
            "train_images": base / train_images, "train_annotations": base / train_annotations,
            "val_images": base / val_images, "val_annotations": base / val_annotations,
        }
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        resolve_num_workers(num_workers, None)  # a bad value fails here, not at fit
        resolve_pin_memory(pin_memory, None)
        self.num_workers = num_workers
        self.train_transforms = train_transforms or training_transforms()
        self.val_transforms = val_transforms or evaluation_transforms()
        self.copy_paste = copy_paste
        self.pin_memory = pin_memory
        self.group_aspect_ratio = group_aspect_ratio
        self.max_image_side = max_image_side
        if repeat_factor_threshold is not None and not repeat_factor_threshold > 0:
            raise InstsegError(f"data.repeat_factor_threshold must be > 0 or null, got "
                               f"{repeat_factor_threshold!r}")
        self.repeat_factor_threshold = repeat_factor_threshold
        self.label_space: CategoryMap | None = None
        self.train_set: CocoInstances | None = None
        self.val_set: CocoInstances | None = None
        self._train_seed: int | None = None
        self._resume_from: dict | None = None  # a checkpoint's train position (load_state_dict)

    def prepare_data(self) -> None:
        """Fail early, naming every missing path and what belongs there."""
        missing = []
        for name, path in self.paths.items():
            is_json = name.endswith("annotations")
            if not (path.is_file() if is_json else path.is_dir()):
                expected = "a COCO instances json" if is_json else "a folder of the json's images"
                missing.append(f"  {name}: {path} (expected {expected})")
        if missing:
            raise InstsegError("dataset files not found:\n" + "\n".join(missing))
        # The cheap checks of the validation json before any model is built (errors raise);
        # the training json's come with setup("fit"), when the trainer starts.
        self.val_checked  # noqa: B018  (cached: setup reuses it)

    @cached_property
    def train_checked(self) -> CheckedAnnotations:
        """The checked training json (errors raise; skips are logged)."""
        return load_checked(self.paths["train_annotations"], self.paths["train_images"])

    @cached_property
    def dataset_categories(self) -> CategoryMap:
        """Categories of the validation json (the training json must list the same)."""
        return CategoryMap.from_coco_categories(self.val_checked.categories)

    @property
    def categories(self) -> CategoryMap:
        """The model's label space: targets are labelled and predictions mapped with it."""
        return self.label_space or self.dataset_categories

    def use_label_space(self, categories: CategoryMap) -> None:
        """Label targets with `categories`, which must include every dataset category."""
        if not categories.covers(self.dataset_categories):
            raise InstsegError(
                f"the model's categories {list(categories.names)} do not include all of "
                f"{self.paths['val_annotations']}'s {list(self.dataset_categories.names)}"
            )
        self.label_space = categories

    @cached_property
    def val_checked(self) -> CheckedAnnotations:
        """The checked validation json (errors raise; skips are logged)."""
        return load_checked(self.paths["val_annotations"], self.paths["val_images"])

    @property
    def val_coco(self) -> COCO:
        """The evaluation ground truth (the validation json without skipped annotations)."""
        return self.val_checked.coco

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = CocoInstances(
                self.paths["train_images"], self.paths["train_annotations"], train=True,
                checked=self.train_checked,
                transforms=self.train_transforms, categories=self.categories,
                max_image_side=self.max_image_side,
            )
            train_categories = self.train_set.checked.categories
            if CategoryMap.from_coco_categories(train_categories) != self.dataset_categories:
                raise InstsegError(
                    f"{self.paths['train_annotations']} and {self.paths['val_annotations']} list "
                    "different categories; both splits need the same 'categories'"
                )
        if self.val_set is None:
            self.val_set = CocoInstances(
                self.paths["val_images"], self.paths["val_annotations"], train=False,
                transforms=self.val_transforms, checked=self.val_checked,
                categories=self.categories,
            )

    def train_dataloader(self) -> DataLoader:
        """Random order and augmentation that are functions of (seed, epoch) and resumable
        mid-epoch (instseg.data.samplers); batches grouped by aspect ratio if asked. After
        load_state_dict, the first loader built continues the checkpoint's epoch where it
        stopped, with the checkpoint's seed. Under DDP Lightning's DistributedSampler replaces
        the plain order, while the repeat-factor order is split among the processes
        (instseg.data.samplers), all of them with rank 0's seed (a collective: every rank
        builds its loader at once)."""
        resume, self._resume_from = self._resume_from or {}, None
        # seed_everything's, or a random 64-bit one; a resumed run's is the checkpoint's
        seed = resume.get("seed", torch.initial_seed() % 2**63)
        if (self.repeat_factor_threshold is not None and self.trainer is not None
                and self.trainer.world_size > 1):
            # Without a seed each process has its own initial seed, and the shares of the
            # repeat-factor epoch must all come from one epoch.
            seed = self.trainer.strategy.broadcast(seed, src=0)
        self._train_seed = seed
        sampler = self._train_sampler(seed)
        # Lightning re-creates the batch sampler under DDP with its DistributedSampler as
        # `sampler`; `ddp_order` survives that, and the batch sampler shards it.
        ddp_order = sampler if isinstance(sampler, RepeatFactorSampler) else None
        start = resume.get("train_position")
        if self.group_aspect_ratio:
            infos = [self.train_set.coco.imgs[i] for i in self.train_set.image_ids]
            batches = GroupedBatchSampler(sampler, aspect_ratio_groups(infos), self.batch_size,
                                          start=start, ddp_order=ddp_order)
        else:
            batches = ResumableBatchSampler(sampler, self.batch_size, drop_last=False,
                                            start=start, ddp_order=ddp_order)
        return ResumableDataLoader(
            self.train_set, batch_sampler=batches,
            collate_fn=partial(collate, copy_paste=self.copy_paste), **self._worker_options(),
            # a generator of its own: creating an iterator draws no number from the global RNG
            generator=torch.Generator().manual_seed(seed),
            progress=self._train_progress if self.trainer else None,
        )

    def _train_sampler(self, seed: int) -> EpochSampler:
        """Each training image once per epoch, or by its repeat factor (see __init__)."""
        if self.repeat_factor_threshold is None:
            return EpochSampler(len(self.train_set), seed=seed)
        annotations = self.train_set.annotations
        factors = repeat_factors(
            [[a["category_id"] for a in annotations[i]] for i in self.train_set.image_ids],
            self.repeat_factor_threshold)
        return RepeatFactorSampler(factors, seed=seed)

    def _worker_options(self) -> dict:
        """num_workers, pin_memory and persistent_workers of a loader for self.trainer."""
        trainer = self.trainer
        device = trainer.strategy.root_device.type if trainer is not None else None
        workers = resolve_num_workers(self.num_workers, device,
                                      trainer.num_devices if trainer is not None else 1)
        return {"num_workers": workers, "persistent_workers": workers > 0,
                "pin_memory": resolve_pin_memory(self.pin_memory, device)}

    def _train_progress(self) -> tuple[int, int]:
        """(batches of the current epoch trained on, batches in an epoch), the trainer's."""
        batches = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return batches, self.trainer.num_training_batches

    def state_dict(self) -> dict:
        """The train loader's seed and position (epoch, batches trained on), saved in every
        checkpoint of fit. Lightning saves the loader's position too, but restores it only
        into a loader built after the restore: when the loader was built earlier, as it is
        when configure_optimizers reads trainer.estimated_stepping_batches with max_epochs
        set (Lightning issue 20550), the saved position is dropped and the resumed run would
        train the epoch's first batches again. The datamodule is restored before any loader
        is built (Trainer._run: restore_datamodule precedes strategy.setup)."""
        loader = self.trainer.train_dataloader if self.trainer is not None else None
        if self._train_seed is None or not isinstance(loader, ResumableDataLoader):
            return {}
        return {"seed": self._train_seed, "train_position": loader.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self._resume_from = dict(state) if state else None

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.val_batch_size, shuffle=False)

    def _loader(self, dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate,
            **self._worker_options(),
            # Creating an iterator draws a worker seed from this generator, or else from the
            # global RNG: with persistent workers a resumed run (no sanity check) would create
            # it at its first validation, which the run it continues did under the sanity
            # check (whose draws Lightning undoes), and the model's sampling would differ.
            generator=torch.Generator().manual_seed(0),
        )


class ShapesDataModule(CocoDataModule):
    """The synthetic shapes set (`instseg.data.synthetic`), generated once under `root`."""

    def __init__(
        self,
        root: str,
        num_train: int = 800,
        num_val: int = 100,
        image_size: int = 160,
        max_objects: int = 5,
        seed: int = 0,
        **loader_kwargs,
    ) -> None:
        super().__init__(
            train_images="train", train_annotations="annotations/instances_train.json",
            val_images="val", val_annotations="annotations/instances_val.json",
            root=root, **loader_kwargs,
        )
        self.generator_args = dict(
            root=Path(root), num_train=num_train, num_val=num_val, image_size=image_size,
            max_objects=max_objects, seed=seed,
        )

    def prepare_data(self) -> None:
        generate_shapes(**self.generator_args)
        super().prepare_data()
