"""Folder datasets: an ImageFolder tree or a tar of one (imagefolder), CUB-200-2011 (cub200).

Their sources are checked and listed here, without decoding a pixel; `decode` turns a listing into
tensors, `streamed` reads it image by image.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from PIL import Image
from torchvision import datasets
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from cnncomp.data.catalog import DataNotFoundError

STREAM_IMAGE_SIZE = 224  # the image size of a streamed folder when image_size is null
# stream=null streams a folder of at least this many training images, or of images this large (at
# 128 px ImageNet's 1.28M training images take 63 GB as uint8; even its 50k validation images 2.5 GB)
STREAM_MIN_IMAGES = 100_000
STREAM_MIN_SIZE = 128

CUB200_URL = "https://data.caltech.edu/records/65de6-vp158"
_CUB200_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt", "images")


class Split(NamedTuple):
    """Image files of one split in ImageFolder order: paths, or contents read from a tar."""

    files: list[str] | list[bytes]
    targets: list[int]
    classes: list[str]


def folder_source(name: str, path: str | None) -> Path:
    """The checked source of folder dataset `name`: a directory (or, for imagefolder, a tar)."""
    return _cub200_source(path) if name == "cub200" else _imagefolder_source(path)


def list_folder(name: str, source: Path) -> tuple[Split, Split]:
    """The listed train and test images of a folder dataset."""
    if name == "cub200":
        return _list_cub200(source)
    return _list_dir(source) if source.is_dir() else _list_tar(source)


def streamed_listing(
    name: str, source: Path, image_size: int | None, stream: bool | None
) -> tuple[Split, Split] | None:
    """The listed train and test images when the folder is streamed from disk, None when it is
    decoded into memory (see `build_data` for the rule)."""
    if stream is False:
        return None
    if not source.is_dir():  # an imagefolder archive: cub200 sources are directories
        if stream:
            raise ValueError(
                f"stream=True reads images one by one from a directory, but {source} is an archive: extract it "
                "(`tar -xf`) and set dataset.path to the directory, or set dataset.stream=false to decode it"
            )
        return None
    train, test = list_folder(name, source)
    large = len(train.files) >= STREAM_MIN_IMAGES or (image_size or first_size(train)) >= STREAM_MIN_SIZE
    return (train, test) if stream or large else None


def check_classes(train: Split, test: Split) -> None:
    if train.classes != test.classes:
        raise ValueError(f"class folders differ: train {train.classes}, test {test.classes}")


def open_image(file: str | bytes) -> Image.Image:
    return Image.open(io.BytesIO(file) if isinstance(file, bytes) else file)


def first_size(split: Split) -> int:
    """The shorter side of the split's first image, read from its header."""
    with open_image(split.files[0]) as first:
        return min(first.size)


def _imagefolder_source(path: str | None) -> Path:
    """The tree or archive `path` names, which must exist."""
    if path is None:
        raise ValueError("dataset 'imagefolder' needs path= (a train/ + test/ or val/ tree, or a tar of one)")
    source = Path(path).expanduser().resolve()
    if not source.exists():
        raise DataNotFoundError(
            f"Dataset 'imagefolder' was not found: {source} does not exist. Pass path= pointing to a "
            "directory with train/<class>/* and test/<class>/* (or val/<class>/*) images, or to a "
            ".tar / .tar.gz of such a directory."
        )
    return source


def _cub200_source(path: str | None) -> Path:
    """The extracted CUB_200_2011 directory `path` names (or its parent), with the official files."""
    how = (
        f"Download CUB_200_2011.tgz (Caltech-UCSD Birds-200-2011, {CUB200_URL}), extract it with "
        "`tar -xzf CUB_200_2011.tgz` and set dataset.path (or CNNCOMP_CUB200) to the CUB_200_2011 directory."
    )
    if path is None:
        raise DataNotFoundError(f"Dataset 'cub200' needs dataset.path. {how}")
    source = Path(path).expanduser().resolve()
    if (source / "CUB_200_2011").is_dir():
        source = source / "CUB_200_2011"
    if source.is_file():
        raise DataNotFoundError(
            f"Dataset 'cub200': {source} is a file; its images are read one by one, so extract the archive first "
            f"(`tar -xzf {source.name}`) and set dataset.path to the extracted CUB_200_2011 directory."
        )
    missing = [name for name in _CUB200_FILES if not (source / name).exists()]
    if missing:
        raise DataNotFoundError(f"Dataset 'cub200' was not found: {source} has no {', '.join(missing)}. {how}")
    return source


def _read_table(file: Path) -> dict[int, str]:
    """The '<id> <value>' lines of a CUB-200-2011 metadata file."""
    rows = (line.split(maxsplit=1) for line in file.read_text().splitlines() if line.strip())
    return {int(key): value.strip() for key, value in rows}


def _list_cub200(source: Path) -> tuple[Split, Split]:
    """The official train and test split of CUB-200-2011 (Wah et al., "The Caltech-UCSD
    Birds-200-2011 dataset", 2011) in images.txt order; labels 0-based from image_class_labels.txt."""
    paths = _read_table(source / "images.txt")
    labels = _read_table(source / "image_class_labels.txt")
    is_train = _read_table(source / "train_test_split.txt")
    names = _read_table(source / "classes.txt")
    classes = [names[k] for k in sorted(names)]
    for table, rows in (("image_class_labels.txt", labels), ("train_test_split.txt", is_train)):
        if rows.keys() != paths.keys():
            raise ValueError(f"cub200: the image ids of {source / table} differ from those of images.txt")
    bad = {v for v in labels.values() if not 1 <= int(v) <= len(classes)} | (set(is_train.values()) - {"0", "1"})
    if bad:
        raise ValueError(f"cub200: values {sorted(bad)} in {source}: labels must be 1..{len(classes)}, splits 0 or 1")
    files = {i: str(source / "images" / p) for i, p in paths.items()}
    missing = [f for f in files.values() if not os.path.isfile(f)]
    if missing:
        raise DataNotFoundError(
            f"Dataset 'cub200': {len(missing)} images listed in images.txt are missing, e.g. {missing[0]}. "
            f"Extract the whole CUB_200_2011.tgz ({CUB200_URL})."
        )

    def split(flag: str) -> Split:
        ids = [i for i in paths if is_train[i] == flag]
        return Split([files[i] for i in ids], [int(labels[i]) - 1 for i in ids], classes)

    return split("1"), split("0")


def _list_dir(source: Path) -> tuple[Split, Split]:
    """The train and test (or val) splits of a directory tree, possibly one folder down."""
    if not (source / "train").is_dir():
        subdirs = [d for d in source.iterdir() if d.is_dir()]
        source = subdirs[0] if len(subdirs) == 1 else source
    splits = [source / name for name in ("train", "test", "val") if (source / name).is_dir()]
    if len(splits) < 2 or splits[0].name != "train":
        raise DataNotFoundError(f"Dataset 'imagefolder': {source} needs train/ and test/ (or val/) folders.")
    folders = [datasets.ImageFolder(d) for d in splits[:2]]
    return tuple(Split([p for p, _ in f.samples], f.targets, f.classes) for f in folders)


def _list_tar(source: Path) -> tuple[Split, Split]:
    """Like `_list_dir` for a tar archive, read into memory in one pass (extracting 60k small files
    takes longer than decoding them)."""
    if not tarfile.is_tarfile(source):
        raise DataNotFoundError(f"Dataset 'imagefolder': {source} is neither a directory nor a tar archive.")
    contents = {}  # path parts -> file bytes
    with tarfile.open(source, "r|*") as tar:
        for member in tar:
            if member.isfile() and has_file_allowed_extension(member.name, IMG_EXTENSIONS):
                contents[PurePosixPath(member.name).parts] = tar.extractfile(member).read()
    tops = {parts[0] for parts in contents}
    depth = 0 if "train" in tops or len(tops) != 1 else 1  # a single top-level folder is skipped
    names = {parts[depth] for parts in contents if len(parts) > depth + 2}
    if "train" not in names or not names & {"test", "val"}:
        raise DataNotFoundError(f"Dataset 'imagefolder': {source} needs train/ and test/ (or val/) folders.")

    def split(name: str) -> Split:
        # ImageFolder order: sorted classes, then sorted paths within a class.
        items = sorted((p[depth + 1], p) for p in contents if len(p) > depth + 2 and p[depth] == name)
        classes = sorted({c for c, _ in items})
        index = {c: i for i, c in enumerate(classes)}
        return Split([contents[p] for _, p in items], [index[c] for c, _ in items], classes)

    return split("train"), split("test" if "test" in names else "val")
