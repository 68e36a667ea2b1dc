"""Data sets used by the book: MNIST (IDX files, offline-first) and the 2-D toy distributions.

* **MNIST** (Chapter 1 and every image chapter; Chapter 9 reads it row by row as a sequence).
  :func:`load_mnist` reads the four standard IDX files (gzipped or not). Where they live is looked up in a fixed
  order (see :func:`load_mnist`); on a machine with internet access the full official set is downloaded and
  MD5-checked when nothing is found, unless ``VAEBOOK_OFFLINE=1``; offline machines point ``$VAEBOOK_DATA`` at a
  copy of the same official files. Every chapter and checkpoint trains on all 60,000 training images; a short run
  uses :func:`epoch_loader`, whose epochs draw a fixed number of images afresh from the whole set.
* **2-D toy data** (Chapter 8 Soft-IntroVAE, Chapter 6 SVGD): :func:`toy2d` samples ``"8gaussians"``,
  ``"2spirals"``, ``"checkerboard"`` and ``"rings"`` with exactly the rules of the Soft-IntroVAE 2-D code
  (the Soft-IntroVAE authors' 2-D code, ``taldatech/soft-intro-vae-pytorch``); :func:`toy2d_log_density` gives the closed-form
  log-density where there is one.

Every random function takes its own ``torch.Generator`` and never touches the global RNG state.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import math
import operator
import os
import sys
import tempfile
import time
import urllib.request
import warnings
import zlib
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

__all__ = [
    "epoch_loader",
    "DataError",
    "load_mnist",
    "binarize_dynamic",
    "sequential_view",
    "load_sequential_mnist",
    "mnist_loaders",
    "toy2d",
    "toy2d_log_density",
    "TOY2D_NAMES",
    "EIGHT_GAUSSIANS_CENTRES",
    "EIGHT_GAUSSIANS_STD",
    "MNIST_FILES",
    "MNIST_MD5",
    "MNIST_MIRRORS",
]


class DataError(ValueError):
    """A data file exists but is truncated or corrupted (bad gzip, wrong magic number, wrong size, ...).

    The message names the file and says to delete it and download it again.
    """


# -----------------------------------------------------------------------------
# MNIST: file names, official checksums, mirrors
# -----------------------------------------------------------------------------

#: base file names (without ``.gz``) of the images and labels of each split
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

#: MD5 of the official gzipped files (the same checksums torchvision checks)
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

# : mirrors tried in order (the ones torchvision uses); every file is
# MD5-checked before it is kept
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://yann.lecun.com/exdb/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
_DOWNLOAD_TIMEOUT_S = 15.0  # per socket operation
_DOWNLOAD_DEADLINE_S = 300.0  # per file, in all
_REPO_ROOT = (
    Path(__file__).resolve().parents[2]
)  # src/vaebook/data.py -> repository root
_SPLITS = ("train", "test")
_BINARIZE_ALLOWED = "False (grey levels), True or 'static' (fixed Bernoulli sample, seed 0), 'threshold' (x > 0.5)"


def _offline() -> bool:
    return os.environ.get("VAEBOOK_OFFLINE", "").strip().lower() in {
        "1",
        "true",
        "yes",
        "on",
    }


def _search_dirs(root) -> list[Path]:
    """Directories searched for the MNIST files, in order (duplicates removed)."""
    if root is not None:
        dirs = [Path(root), Path(root) / "mnist"]
    else:
        dirs = []
        env = os.environ.get("VAEBOOK_DATA")
        if env:
            dirs += [Path(env) / "mnist", Path(env)]
        dirs += [*_repo_dirs(), Path.cwd() / "data" / "mnist"]
    out: list[Path] = []
    for d in dirs:
        d = d.expanduser()
        if d not in out:
            out.append(d)
    return out


def _download_dirs(root) -> list[Path]:
    """Where a download may go, in order of preference (the first writable one is used)."""
    if root is not None:
        return [Path(root).expanduser()]
    dirs = []
    env = os.environ.get("VAEBOOK_DATA")
    if env:
        dirs.append(Path(env).expanduser() / "mnist")
    # in a clone: the repository's data/ folder; when installed from a
    # wheel (e.g. on Colab): ./data/mnist
    dirs += _repo_dirs() or [Path.cwd() / "data" / "mnist"]
    return dirs


def _repo_dirs() -> list[Path]:
    """``<repo>/data/mnist`` when the package runs from a clone (editable install), else nothing."""
    if (_REPO_ROOT / "pyproject.toml").is_file() and (
        _REPO_ROOT / "src" / "vaebook"
    ).is_dir():
        return [_REPO_ROOT / "data" / "mnist"]
    return []


def _find_file(directory: Path, base: str) -> Path | None:
    for name in (base + ".gz", base):
        p = directory / name
        if p.is_file():
            return p
    return None


def _find_split(split: str, root) -> tuple[Path, Path] | None:
    img_base, lab_base = MNIST_FILES[split]
    for d in _search_dirs(root):
        img, lab = _find_file(d, img_base), _find_file(d, lab_base)
        if img is not None and lab is not None:
            return img, lab
    return None


def _urlopen(url: str, timeout: float):
    """Open ``url`` (kept separate so that tests can replace the network)."""
    req = urllib.request.Request(
        url, headers={"User-Agent": "vaebook (MNIST download)"}
    )
    # noqa: S310 - fixed https/http mirrors
    return urllib.request.urlopen(req, timeout=timeout)


def _writable_dir(d: Path) -> bool:
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(d, os.W_OK | os.X_OK)


def _download_one(name: str, target: Path, errors: list[str]) -> bool:
    """Download ``name`` into ``target`` via a temporary file; keep it only if its MD5 is the official one."""
    expected = MNIST_MD5[name]
    for mirror in MNIST_MIRRORS:
        url = mirror + name
        fd, tmp = tempfile.mkstemp(
            prefix="." + name + ".", suffix=".part", dir=target
        )
        try:
            md5 = hashlib.md5()
            start = time.monotonic()
            with (
                os.fdopen(fd, "wb") as f,
                _urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as resp,
            ):
                while True:
                    chunk = resp.read(1 << 16)
                    if not chunk:
                        break
                    md5.update(chunk)
                    f.write(chunk)
                    if time.monotonic() - start > _DOWNLOAD_DEADLINE_S:
                        raise TimeoutError(
                            f"took more than {_DOWNLOAD_DEADLINE_S:.0f} s"
                        )
            if md5.hexdigest() != expected:
                errors.append(
                    f"{url}: MD5 {md5.hexdigest()} != official {expected}"
                )
                continue
            os.replace(tmp, target / name)
            return True
        except (
            Exception
        ) as e:  # offline, DNS, HTTP error, timeout, ...: try the next mirror
            errors.append(f"{url}: {type(e).__name__}: {e}")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return False


def _try_download(root) -> list[str]:
    """Download the missing files of the full official set into the first writable download dir.

    Returns a list of error strings (empty on success).
    """
    errors: list[str] = []
    target = None
    created = False
    for d in _download_dirs(root):
        existed = d.exists()
        if _writable_dir(d):
            target, created = d, not existed
            break
    if target is None:
        return [
            "no writable download directory among "
            f"{[str(d) for d in _download_dirs(root)]}"
        ]
    missing = [
        n for n in MNIST_MD5 if _find_file(target, n[: -len(".gz")]) is None
    ]
    if missing:
        print(
            f"vaebook: downloading MNIST ({', '.join(missing)}) into {target} "
            "...",
            file=sys.stderr,
        )
    for name in missing:
        if not _download_one(name, target, errors):
            break
    if errors and created:
        try:
            # only if still empty: leave no empty folder behind
            # after a failed download
            target.rmdir()
        except OSError:
            pass
    return errors


def _missing_message(split: str, root, download_note: str) -> str:
    img_base, lab_base = MNIST_FILES[split]
    searched = "\n".join(f"  - {d}" for d in _search_dirs(root))
    return (
        f"MNIST {split!r} files not found. Expected {img_base}[.gz] and "
        f"{lab_base}[.gz] in one of:\n{searched}\n"
        f"{download_note}\n"
        "Fix: download the four IDX files (train-images-idx3-ubyte.gz, "
        "train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) from an MNIST "
        "mirror (e.g. "
        f"{MNIST_MIRRORS[0]}) into one of those folders, or set the "
        "environment variable VAEBOOK_DATA to a folder "
        "whose 'mnist' subfolder holds them (or pass root=...)."
    )


# -----------------------------------------------------------------------------
# IDX parsing (cached per path, modification time and size)
# -----------------------------------------------------------------------------


def _corrupt(path: str, problem: str) -> DataError:
    return DataError(
        f"{path}: {problem}. The file is truncated or corrupted: delete it "
        "and download it again "
        "(see vaebook.data.load_mnist)."
    )


@functools.lru_cache(maxsize=16)
def _read_idx_cached(
    path: str, mtime_ns: int, size: int, kind: str
) -> torch.Tensor:
    with open(path, "rb") as f:
        raw = f.read()
    if path.endswith(".gz"):
        try:
            data = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise _corrupt(
                path, f"not a valid gzip file ({type(e).__name__}: {e})"
            ) from e
    else:
        data = raw
    expected_magic, ndim = (
        (_IMAGES_MAGIC, 3) if kind == "images" else (_LABELS_MAGIC, 1)
    )
    if len(data) < 4:
        raise _corrupt(
            path, f"only {len(data)} bytes, too short for an IDX header"
        )
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise _corrupt(
            path,
            f"IDX magic number {magic}, expected {expected_magic} for an "
            f"MNIST {kind} file",
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise _corrupt(
            path,
            f"only {len(data)} bytes, too short for the {header}-byte IDX "
            "header",
        )
    dims = tuple(
        int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)
    )
    if dims[0] == 0:
        raise _corrupt(
            path,
            f"its IDX header declares 0 {kind} (an MNIST {kind} file holds "
            "10,000 or 60,000)",
        )
    if kind == "images" and dims[1:] != (28, 28):
        raise _corrupt(
            path, f"images of size {dims[1]}x{dims[2]}, expected 28x28"
        )
    n_bytes = math.prod(dims)
    if len(data) - header != n_bytes:
        raise _corrupt(
            path,
            f"holds {len(data) - header} data bytes but its header says "
            f"{n_bytes} (dimensions {dims})",
        )
    t = torch.frombuffer(
        bytearray(data), dtype=torch.uint8, offset=header, count=n_bytes
    ).reshape(dims)
    if kind == "labels" and n_bytes and int(t.max()) > 9:
        raise _corrupt(path, f"label {int(t.max())} outside 0..9")
    return t


def _read_idx(path: Path, kind: str) -> torch.Tensor:
    st = os.stat(path)
    return _read_idx_cached(str(path), st.st_mtime_ns, st.st_size, kind)


def _check_split(split) -> None:
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")


def _binarize_mode(binarize) -> str:
    if binarize is None or binarize is False:
        return "grey"
    if binarize is True or binarize == "static":
        return "static"
    if binarize == "threshold":
        return "threshold"
    hint = ""
    if binarize == "dynamic":
        hint = (
            " Dynamic binarisation is drawn afresh for every minibatch: load "
            "grey levels (binarize=False) and "
            "call vaebook.data.binarize_dynamic(x) on each batch."
        )
    raise ValueError(
        f"binarize must be one of {_BINARIZE_ALLOWED}; got {binarize!r}.{hint}"
    )


def load_mnist(
    split: str = "train", root=None, binarize=False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load an MNIST split as tensors (Chapter 1 and every image chapter).

    Returns ``(x, y)``: ``x`` float32 of shape ``(N, 1, 28, 28)`` with values in ``[0, 1]`` and ``y`` int64 of shape
    ``(N,)`` with the digits 0..9. ``N`` is 60,000 / 10,000 (train / test) for the full set, 10,000 / 10,000 for the
    offline subset.

    Arguments
    ---------
    split : ``"train"`` or ``"test"``.
    root : folder holding the files (also ``root/mnist`` is tried). When given, only it is searched and a download
        goes there.
    binarize :
        * ``False`` (or ``None``): grey levels ``pixel / 255``;
        * ``True`` or ``"static"``: one fixed binarisation, pixel = 1 iff ``U < pixel/255`` with ``U`` uniform from
          ``torch.rand`` on a ``torch.Generator`` seeded with 0 (a Bernoulli sample with ``p`` = intensity, identical
          on every call; train and test are each drawn with seed 0);
        * ``"threshold"``: ``(pixel / 255 > 0.5)`` as 0./1.
        For dynamic binarisation (a fresh sample per minibatch) load grey levels and call :func:`binarize_dynamic`.

    Files: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte`` (train) or ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte`` (test), each either gzipped (``.gz``, preferred when both exist) or raw. Search order,
    first folder holding both files of the split wins:

    1. ``root`` then ``root/mnist``, if ``root`` is given (nothing else is searched);
    2. ``$VAEBOOK_DATA/mnist`` then ``$VAEBOOK_DATA``, if the environment variable is set;
    3. ``<repo>/data/mnist`` when the package runs from a clone (``src/vaebook/../../data/mnist``);
    4. ``./data/mnist`` in the current working directory.

    If nothing is found and ``VAEBOOK_OFFLINE`` is not ``1``, the missing files of the full official set (all four)
    are downloaded from :data:`MNIST_MIRRORS` into the first writable of ``root``, ``$VAEBOOK_DATA/mnist``,
    ``<repo>/data/mnist`` (or ``./data/mnist`` when installed from a wheel, e.g. on Colab); each file goes to a temporary name, its MD5 is checked against :data:`MNIST_MD5`, and only
    then is it renamed. With ``VAEBOOK_OFFLINE=1`` no network call is made.

    Raises ``FileNotFoundError`` (listing the folders searched, the expected names and how to fix it) when the files
    are missing and cannot be downloaded; :class:`DataError` (a ``ValueError``) naming the file when a file is
    truncated or corrupted (bad gzip, wrong magic number, wrong size, image/label count mismatch); ``ValueError`` for
    a bad ``split`` or ``binarize``. Parsed files are cached in memory per (path, mtime, size), so repeated calls are
    fast; every call returns new tensors.
    """
    _check_split(split)
    mode = _binarize_mode(binarize)
    found = _find_split(split, root)
    if found is None:
        if _offline():
            note = "Downloading is disabled because VAEBOOK_OFFLINE=1."
        else:
            errors = _try_download(root)
            found = _find_split(split, root)
            note = (
                "Download from the official mirrors failed (set "
                "VAEBOOK_OFFLINE=1 to skip the attempt):\n"
                + "\n".join(f"  {e}" for e in errors)
            )
        if found is None:
            raise FileNotFoundError(_missing_message(split, root, note))
    img_path, lab_path = found
    images = _read_idx(img_path, "images")
    labels = _read_idx(lab_path, "labels")
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{img_path} holds {images.shape[0]} images but {lab_path} holds "
            f"{labels.shape[0]} labels. One of them is "
            "truncated or from another split: delete both and download them "
            "again."
        )
    x = images.to(torch.float32).div_(255.0).unsqueeze(1)
    y = labels.to(torch.int64)
    if mode == "static":
        g = torch.Generator().manual_seed(0)
        x = (torch.rand(x.shape, generator=g) < x).to(torch.float32)
    elif mode == "threshold":
        x = (x > 0.5).to(torch.float32)
    return x, y


def binarize_dynamic(
    x: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Dynamic binarisation (Burda et al., 2016): a fresh Bernoulli sample with ``p = x``, for one minibatch.

    ``x``: grey levels in ``[0, 1]``, any shape (typically ``(B, 1, 28, 28)``), floating dtype. Returns a tensor of
    the same shape, dtype and device holding 0. and 1. Training loops of Chapter 1 (and the image chapters) call it on
    every minibatch so that the Bernoulli likelihood is a real likelihood of binary data. ``generator`` (on ``x``'s
    device) makes the draw reproducible; ``None`` uses the global RNG.
    """
    if not torch.is_floating_point(x):
        raise ValueError(
            "x must be a floating tensor of grey levels in [0, 1], got dtype "
            f"{x.dtype}"
        )
    if not bool(((x >= 0) & (x <= 1)).all()):  # also catches NaN
        raise ValueError(
            "x must hold grey levels in [0, 1] (no NaN), got values outside "
            "that range"
        )
    return torch.bernoulli(x, generator=generator)


def sequential_view(x: torch.Tensor) -> torch.Tensor:
    """Images as row sequences for Chapter 9 (VRNN on sequential MNIST).

    ``(N, 1, 28, 28)`` -> ``(N, 28, 28)`` = (batch, time step = image row, features = the 28 pixels of that row), so
    ``out[n, t] == x[n, 0, t]``. ``(N, 784)`` and ``(N, 28, 28)`` are accepted too. A view when ``x`` is contiguous
    (otherwise a contiguous copy). Time-major models transpose it: ``out.transpose(0, 1)`` is ``(28, N, 28)``.
    """
    shape = tuple(x.shape)
    if not (shape[1:] in {(1, 28, 28), (28, 28), (784,)} and len(shape) >= 2):
        raise ValueError(
            "x must have shape (N, 1, 28, 28), (N, 28, 28) or (N, 784); got "
            f"{shape}"
        )
    return x.reshape(shape[0], 28, 28)


def load_sequential_mnist(
    split: str = "train", root=None, binarize=False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequential MNIST for Chapter 9 (VRNN): ``(x_seq, y)`` with ``x_seq`` float32 ``(N, 28, 28)`` (batch, rows as
    time steps, 28 pixels per row) and ``y`` int64 ``(N,)``. Arguments as in :func:`load_mnist`."""
    x, y = load_mnist(split, root=root, binarize=binarize)
    return sequential_view(x), y


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise ValueError(
            f"{name} must be a positive int, got {value!r}"
        ) from None
    if v <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return v


def _first(x, y, n, name, split):
    if n is None:
        return x, y
    n = _positive_int(name, n)
    if n > x.shape[0]:
        warnings.warn(
            f"{name}={n} but the {split} split has only {x.shape[0]} images; "
            "using all of them",
            stacklevel=3,
        )
    return x[:n], y[:n]


def mnist_loaders(
    batch_size: int = 128,
    root=None,
    binarize=False,
    num_train: int | None = None,
    num_test: int | None = None,
    seed: int = 0,
) -> tuple[DataLoader, DataLoader]:
    """``(train_loader, test_loader)`` over MNIST for Chapter 1 and the image chapters.

    Each batch is ``(x, y)`` with ``x`` float32 ``(B, 1, 28, 28)`` and ``y`` int64 ``(B,)`` (``B <= batch_size``; the
    last batch may be smaller). The train loader reshuffles every epoch with a ``torch.Generator`` seeded by ``seed``
    (so two loaders built with the same seed yield the same order); the test loader keeps the file order.
    ``num_train`` / ``num_test`` keep only the first ``n`` images of each split (for speed). ``root`` and
    ``binarize`` are as in :func:`load_mnist`; for dynamic binarisation call :func:`binarize_dynamic` on each batch.
    """
    batch_size = _positive_int("batch_size", batch_size)
    for name, n in (
        ("num_train", num_train),
        ("num_test", num_test),
    ):  # before any file is read
        if n is not None:
            _positive_int(name, n)
    xtr, ytr = _first(
        *load_mnist("train", root=root, binarize=binarize),
        num_train,
        "num_train",
        "train",
    )
    xte, yte = _first(
        *load_mnist("test", root=root, binarize=binarize),
        num_test,
        "num_test",
        "test",
    )
    gen = torch.Generator().manual_seed(int(seed))
    train = DataLoader(
        TensorDataset(xtr, ytr),
        batch_size=batch_size,
        shuffle=True,
        generator=gen,
    )
    test = DataLoader(
        TensorDataset(xte, yte), batch_size=batch_size, shuffle=False
    )
    return train, test


def epoch_loader(
    *tensors: torch.Tensor,
    batch_size: int = 100,
    seed: int = 0,
    images_per_epoch: int | None = None,
) -> DataLoader:
    """A shuffled ``DataLoader`` over all of ``tensors`` whose "epoch" is ``images_per_epoch`` examples.

    With ``images_per_epoch=None`` an epoch is one pass over the data. With ``images_per_epoch=n`` each epoch
    draws ``n`` examples without replacement from the whole set (a fresh draw every epoch), so a training run
    costs what ``n``-image epochs cost while every example of the full training set can be seen. The order is
    fixed by ``seed`` (a ``torch.Generator``), so two loaders built alike yield the same batches.
    """
    batch_size = _positive_int("batch_size", batch_size)
    if not tensors:
        raise ValueError("epoch_loader needs at least one tensor")
    n = tensors[0].shape[0]
    if images_per_epoch is not None:
        images_per_epoch = _positive_int("images_per_epoch", images_per_epoch)
        if images_per_epoch > n:
            raise ValueError(
                f"images_per_epoch must be in [1, {n}] (the number of "
                f"examples), got {images_per_epoch}"
            )
    gen = torch.Generator().manual_seed(int(seed))
    ds = TensorDataset(*tensors)
    if images_per_epoch is None:
        return DataLoader(
            ds, batch_size=batch_size, shuffle=True, generator=gen
        )
    sampler = torch.utils.data.RandomSampler(
        ds, replacement=False, num_samples=images_per_epoch, generator=gen
    )
    return DataLoader(ds, batch_size=batch_size, sampler=sampler)


# -----------------------------------------------------------------------------
# 2-D toy data (Soft-IntroVAE authors' 2-D code)
# -----------------------------------------------------------------------------

TOY2D_NAMES = ("8gaussians", "2spirals", "checkerboard", "rings")

_R2 = 1.0 / math.sqrt(2.0)
_EIGHT_UNIT = (
    (1.0, 0.0),
    (-1.0, 0.0),
    (0.0, 1.0),
    (0.0, -1.0),
    (_R2, _R2),
    (_R2, -_R2),
    (-_R2, _R2),
    (-_R2, -_R2),
)
_EIGHT_SCALE, _EIGHT_NOISE, _EIGHT_DIV = 2.0, 0.02, 1.414
# : the 8 modes of "8gaussians" after the division by 1.414 (on a circle of
# radius 2/1.414), shape (8, 2)
EIGHT_GAUSSIANS_CENTRES = (
    torch.tensor(_EIGHT_UNIT, dtype=torch.float64) * _EIGHT_SCALE / _EIGHT_DIV
)
#: per-mode standard deviation of "8gaussians" (0.02 / 1.414)
EIGHT_GAUSSIANS_STD = _EIGHT_NOISE / _EIGHT_DIV

_RING_RADII = (
    1.0,
    0.75,
    0.5,
    0.25,
)  # before the factor 3; the remainder of n // 4 goes to the innermost ring
_RING_SCALE, _RING_NOISE = 3.0, 0.08
_CHECKER_DENSITY = 1.0 / 32.0  # 8 squares of side 2


def _toy_name(name) -> str:
    key = name.lower() if isinstance(name, str) else name
    if key not in TOY2D_NAMES:
        raise ValueError(f"name must be one of {TOY2D_NAMES}, got {name!r}")
    return key


def _generator(seed) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    g = torch.Generator()
    if seed is None:
        g.seed()  # non-deterministic
    else:
        try:
            if isinstance(seed, bool):
                raise TypeError
            g.manual_seed(operator.index(seed))
        except (TypeError, RuntimeError):
            raise ValueError(
                f"seed must be an int, None or a torch.Generator, got {seed!r}"
            ) from None
    return g


def toy2d(name: str, n: int, seed=None) -> torch.Tensor:
    r"""``n`` samples of a 2-D toy distribution, float32 of shape ``(n, 2)`` (Chapter 8 Soft-IntroVAE, Chapter 6 SVGD).

    ``name`` is one of :data:`TOY2D_NAMES` (case-insensitive). ``seed``: an int (reproducible), ``None``
    (non-deterministic) or a ``torch.Generator`` (used as is and advanced, e.g. one per training run for fresh
    batches). A local generator is used, so the global RNG state is never touched. Rules (the
    Soft-IntroVAE 2-D code, data functions from the BNAF repository):

    * ``"8gaussians"``: a centre chosen uniformly among :math:`(\pm1,0),(0,\pm1),(\pm\frac1{\sqrt2},\pm\frac1{\sqrt2})`,
      times scale 2, plus i.i.d. :math:`\mathcal N(0, 0.02^2)` noise, all divided by 1.414: modes on a circle of radius
      :math:`2/1.414\approx1.414` with s.d. :math:`0.02/1.414\approx0.014` (:data:`EIGHT_GAUSSIANS_CENTRES`).
    * ``"2spirals"``: with :math:`m=\lceil n/2\rceil`, :math:`t=\sqrt{U}\cdot540\cdot2\pi/360`,
      :math:`d_1=(-t\cos t+0.5U',\ t\sin t+0.5U'')` (U, U', U'' uniform on [0, 1)), the rows are
      :math:`[d_1; -d_1]/3` (the first ``n`` of them: the first half one arm, the second half the other) plus
      :math:`0.1\,\mathcal N(0, I)`.
    * ``"checkerboard"``: :math:`x_1\sim U[-2,2)`, :math:`x_2'=U[0,1)-2\,\mathrm{Bernoulli}(\frac12)`,
      :math:`x_2=x_2'+(\lfloor x_1\rfloor \bmod 2)`, output :math:`2(x_1,x_2)`: uniform on 8 of the 16 squares of side 2
      tiling :math:`[-4,4]^2` (square :math:`[2i,2i+2)\times[2j,2j+2)` with :math:`i+j` even), density 1/32.
    * ``"rings"``: ``n // 4`` points at equally spaced angles :math:`2\pi k/K` (``K`` = points on that ring) on each of
      the circles of radii 1, 0.75, 0.5 and the rest on radius 0.25, all times 3 (radii 3, 2.25, 1.5, 0.75); these
      ``n`` points are resampled ``n`` times with replacement, then :math:`0.08\,\mathcal N(0, I)` noise is added.
    """
    key = _toy_name(name)
    n = _positive_int("n", n)
    g = _generator(seed)
    if key == "8gaussians":
        centres = torch.tensor(_EIGHT_UNIT, dtype=torch.float32) * _EIGHT_SCALE
        k = torch.randint(0, 8, (n,), generator=g)
        x = (
            centres[k] + _EIGHT_NOISE * torch.randn(n, 2, generator=g)
        ) / _EIGHT_DIV
    elif key == "2spirals":
        m = (n + 1) // 2
        t = (
            torch.sqrt(torch.rand(m, 1, generator=g))
            * 540.0
            * (2.0 * math.pi)
            / 360.0
        )
        d1x = -torch.cos(t) * t + torch.rand(m, 1, generator=g) * 0.5
        d1y = torch.sin(t) * t + torch.rand(m, 1, generator=g) * 0.5
        d1 = torch.cat([d1x, d1y], dim=1)
        x = torch.cat([d1, -d1], dim=0)[:n] / 3.0
        x = x + 0.1 * torch.randn(n, 2, generator=g)
    elif key == "checkerboard":
        x1 = torch.rand(n, generator=g) * 4.0 - 2.0
        x2_ = (
            torch.rand(n, generator=g)
            - torch.randint(0, 2, (n,), generator=g).to(torch.float32) * 2.0
        )
        x2 = x2_ + torch.remainder(torch.floor(x1), 2.0)
        x = torch.stack([x1, x2], dim=1) * 2.0
    else:  # rings
        q = n // 4
        counts = (q, q, q, n - 3 * q)
        pts = []
        for r, c in zip(_RING_RADII, counts):
            ang = (
                2.0
                * math.pi
                * torch.arange(c, dtype=torch.float64)
                / max(c, 1)
            )
            pts.append(
                torch.stack([torch.cos(ang), torch.sin(ang)], dim=1) * r
            )
        base = (torch.cat(pts, dim=0) * _RING_SCALE).to(torch.float32)
        idx = torch.randint(0, n, (n,), generator=g)
        x = base[idx] + _RING_NOISE * torch.randn(n, 2, generator=g)
    return x.to(torch.float32).contiguous()


def toy2d_log_density(name: str, x: torch.Tensor) -> torch.Tensor:
    r"""Closed-form log-density of a 2-D toy distribution at ``x`` of shape ``(..., 2)``; returns shape ``(...)``.

    Used by Chapter 8 (Soft-IntroVAE) and Chapter 6 (SVGD: the score of the target) for exact references.

    * ``"8gaussians"``: :math:`\log\frac18\sum_k\mathcal N(x;\mu_k,\sigma^2 I)` with the post-division centres
      :data:`EIGHT_GAUSSIANS_CENTRES` and :math:`\sigma=0.02/1.414` (:data:`EIGHT_GAUSSIANS_STD`); differentiable.
    * ``"checkerboard"``: :math:`\log(1/32)` on the 8 closed squares of side 2 of the support (see :func:`toy2d`),
      ``-inf`` elsewhere (square boundaries, a null set, count as inside).
    * ``"2spirals"`` and ``"rings"`` have no closed form: ``NotImplementedError``.

    ``x`` of a floating dtype keeps its dtype and device; other dtypes are converted to float32.
    """
    key = _toy_name(name)
    x = torch.as_tensor(x)
    if not torch.is_floating_point(x):
        x = x.to(torch.float32)
    if x.ndim == 0 or x.shape[-1] != 2:
        raise ValueError(f"x must have shape (..., 2), got {tuple(x.shape)}")
    if bool(torch.isnan(x).any()):
        raise ValueError(
            "x must not contain NaN (points of the plane, shape (..., 2))"
        )
    if key == "8gaussians":
        mu = EIGHT_GAUSSIANS_CENTRES.to(dtype=x.dtype, device=x.device)
        var = EIGHT_GAUSSIANS_STD**2
        sq = ((x.unsqueeze(-2) - mu) ** 2).sum(-1)  # (..., 8)
        log_comp = -0.5 * sq / var - math.log(2.0 * math.pi * var)
        return torch.logsumexp(log_comp, dim=-1) - math.log(8.0)
    if key == "checkerboard":
        x1, x2 = x[..., 0], x[..., 1]
        inside = torch.zeros(x.shape[:-1], dtype=torch.bool, device=x.device)
        for i in range(-2, 2):
            for j in range(-2, 2):
                if (i + j) % 2 == 0:
                    inside |= (
                        (x1 >= 2 * i)
                        & (x1 <= 2 * i + 2)
                        & (x2 >= 2 * j)
                        & (x2 <= 2 * j + 2)
                    )
        out = torch.full(
            x.shape[:-1], -math.inf, dtype=x.dtype, device=x.device
        )
        return out.masked_fill(inside, math.log(_CHECKER_DENSITY))
    raise NotImplementedError(
        f"toy2d_log_density: {key!r} has no closed-form density (only "
        "8gaussians and checkerboard have one); "
        "estimate it from samples (e.g. a histogram or a kernel density "
        "estimate) instead."
    )
