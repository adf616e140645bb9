"""Images/s of hf_kd's data path for ImageNet-size JPEGs, per DataLoader worker count, next to torchvision's
``ImageFolder`` with the same transforms and workers, in the same run.

hf_kd's path is the one the recipes build: ``load_image_data`` on an ILSVRC-layout folder (``train/<synset>/``,
``val/<synset>/``), the dataset transform (JPEG decode, random-resized crop; evaluation: resize + centre crop), the
Trainer's own DataLoader (``get_train_dataloader`` / ``get_eval_dataloader`` with ``dataloader_num_workers``, hf_kd's
collator) and ``_prepare_inputs`` (hf_kd's batched flip and normalisation, here on the CPU). The baseline is
torchvision's reference ImageNet pipeline: ``ImageFolder`` + ``RandomResizedCrop(224)``, ``RandomHorizontalFlip``,
``ToTensor``, ``Normalize`` in the workers (evaluation: ``Resize(256)``, ``CenterCrop(224)``, ...), batched by the
default collate. Both read the same files in the same tree; the passes of the two alternate, so load from other
processes falls on both alike, and the ratio is taken from the medians. hf_kd is also timed without
``_prepare_inputs`` (the uint8 batches as collated): in a GPU run the batched flip and normalisation run on the GPU,
so that is what the CPU cores must supply.

    python benchmarks/data_throughput.py FOLDER [--workers 1 2] [--batch_size 64] [--passes 4]

FOLDER: a folder of JPEGs named ``<class>_<anything>.JPEG`` (or holding them in ``images/``), e.g. a sample of
ImageNet named ``<synset>_<name>.JPEG``; a tree of symbolic links in the ILSVRC layout is made from it in a temporary
folder (train and val both hold every image). Or a folder already in the ILSVRC layout (``train/<class>/...``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


def ilsvrc_tree(folder: str, root: str) -> str:
    """``folder`` as ``root/{train,val}/<class>/<file>`` (symbolic links); ``folder`` itself if already so laid out."""
    if os.path.isdir(os.path.join(folder, "train")):
        return folder
    images = os.path.join(folder, "images") if os.path.isdir(os.path.join(folder, "images")) else folder
    files = sorted(f for f in os.listdir(images) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise SystemExit(f"No images ({', '.join(IMAGE_EXTENSIONS)}) in {images}")
    for split in ("train", "val"):
        for f in files:
            cls = f.split("_", 1)[0]
            os.makedirs(os.path.join(root, split, cls), exist_ok=True)
            os.symlink(os.path.abspath(os.path.join(images, f)), os.path.join(root, split, cls, f))
    return root


def hf_kd_loaders(tree: str, workers: int, batch_size: int, out: str):
    """(train step, eval step) iterators-factories of hf_kd's path: the Trainer's DataLoaders + ``_prepare_inputs``."""
    from hf_kd.data import load_image_data
    from hf_kd.models import create_student
    from hf_kd.trainers import DistillationArguments, SupervisedTrainer

    data = load_image_data(tree)
    if data.input_size != (3, 224, 224):
        raise SystemExit(f"expected ImageNet-1k's 224 px for an ILSVRC tree, got {data.input_size}")
    student = create_student("test_resnet", data.num_labels, data.label_names, **data.preprocessing)
    args = DistillationArguments(output_dir=out, use_cpu=True, report_to=[], per_device_train_batch_size=batch_size,
                                 per_device_eval_batch_size=batch_size, dataloader_num_workers=workers, seed=0,
                                 disable_tqdm=True)
    trainer = SupervisedTrainer(model=student, args=args, train_dataset=data.train, eval_dataset=data.eval,
                                augmentation=data.batch_augment())

    def run(train: bool, prepare: bool = True) -> int:
        trainer.model.train(train)
        loader = trainer.get_train_dataloader() if train else trainer.get_eval_dataloader()
        n = 0
        for batch in loader:
            n += len(trainer._prepare_inputs(batch)["pixel_values"] if prepare else batch["pixel_values"])
        return n

    return run, (data.mean, data.std, data.crop_pct)


def torchvision_loaders(tree: str, workers: int, batch_size: int, mean, std, crop_pct: float):
    from torchvision import datasets, transforms as T

    normalise = [T.ToTensor(), T.Normalize(mean, std)]
    train = datasets.ImageFolder(os.path.join(tree, "train"), T.Compose(
        [T.RandomResizedCrop(224), T.RandomHorizontalFlip(), *normalise]))
    evald = datasets.ImageFolder(os.path.join(tree, "val"), T.Compose(
        [T.Resize(int(224 / crop_pct)), T.CenterCrop(224), *normalise]))

    def run(train_mode: bool) -> int:
        loader = torch.utils.data.DataLoader(train if train_mode else evald, batch_size=batch_size,
                                             shuffle=train_mode, num_workers=workers)
        return sum(len(x) for x, _ in loader)

    return run


def measure(folder: str, workers_list, batch_size: int, passes: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tree = ilsvrc_tree(folder, os.path.join(tmp, "tree"))
        for workers in workers_list:
            ours, (mean, std, crop_pct) = hf_kd_loaders(tree, workers, batch_size, os.path.join(tmp, "out"))
            theirs = torchvision_loaders(tree, workers, batch_size, mean, std, crop_pct)
            for train in (True, False):
                runs = {"hf_kd": lambda t: ours(t), "loader": lambda t: ours(t, prepare=False),
                        "torchvision": theirs}
                times = {k: [] for k in runs}
                for p in range(passes + 1):  # pass 0 warms the page cache and is not counted
                    for name, run in runs.items():
                        torch.manual_seed(p)
                        start = time.perf_counter()
                        n = run(train)
                        if p:
                            times[name].append(n / (time.perf_counter() - start))
                rate = {k: statistics.median(v) for k, v in times.items()}
                rows.append(dict(path="train" if train else "eval", workers=workers, images=n, **rate,
                                 ratio=rate["hf_kd"] / rate["torchvision"],
                                 loader_ratio=rate["loader"] / rate["torchvision"]))
                print(f"{rows[-1]['path']:5s} workers {workers}: hf_kd {rate['hf_kd']:.0f} img/s (without the "
                      f"flip/normalise: {rate['loader']:.0f}), torchvision {rate['torchvision']:.0f} img/s, ratio "
                      f"{rows[-1]['ratio']:.2f} ({rows[-1]['loader_ratio']:.2f})", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| path | DataLoader workers | hf_kd img/s | torchvision img/s | hf_kd / torchvision | hf_kd without the "
             "batched flip/normalise (on the GPU in a GPU run) img/s | its ratio |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        what = ("train: decode + random-resized crop + flip" if r["path"] == "train"
                else "eval: decode + resize + centre crop")
        lines.append(f"| {what} | {r['workers']} | {r['hf_kd']:.0f} | {r['torchvision']:.0f} | {r['ratio']:.2f} | "
                     f"{r['loader']:.0f} | {r['loader_ratio']:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--passes", type=int, default=4, help="timed passes over the images per pipeline")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the main process only batches and normalises; the workers do the decoding
    rows = measure(args.folder, args.workers, args.batch_size, args.passes)
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
