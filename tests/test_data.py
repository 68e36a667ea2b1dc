"""Tests of vaebook.data: MNIST IDX reading (real subset + synthetic files), binarisation, sequences, toy 2-D data.

No network: every test runs with VAEBOOK_OFFLINE=1 and the download function is replaced by one that fails the test.
The real-data tests need the offline MNIST subset: set VAEBOOK_DATA to the folder holding ``mnist/`` (CI does).
"""
from __future__ import annotations

import gzip
import hashlib
import math
import os
from pathlib import Path

import pytest
import torch

from vaebook import data as D

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
TEST_IMAGES_MD5 = "2646ac647ad5339dbf082846283269ea"  # MD5 of the decompressed t10k-images-idx3-ubyte (README)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No network in any test: offline flag set, and any attempt to open a URL fails the test."""
    monkeypatch.setenv("VAEBOOK_OFFLINE", "1")

    def no_network(url, timeout):  # pragma: no cover - only reached on a bug
        raise AssertionError(f"network access attempted: {url}")

    monkeypatch.setattr(D, "_urlopen", no_network)


# ----------------------------------------------------------------------------------------------------------------
# real MNIST subset
# ----------------------------------------------------------------------------------------------------------------


def _real_mnist_dir() -> Path | None:
    env = os.environ.get("VAEBOOK_DATA")
    candidates = ([Path(env) / "mnist", Path(env)] if env else []) + [REPO_ROOT / "data" / "mnist",
                                                                       Path.cwd() / "data" / "mnist"]
    for c in candidates:
        if any((c / f"t10k-images-idx3-ubyte{ext}").is_file() for ext in (".gz", "")):
            return c
    return None


REAL_DIR = _real_mnist_dir()
needs_real = pytest.mark.skipif(
    REAL_DIR is None,
    reason="real MNIST not found: VAEBOOK_DATA is unset and there is no data/mnist (set VAEBOOK_DATA to the folder "
           "whose mnist/ subfolder holds the IDX files)",
)


@needs_real
@pytest.mark.parametrize("split", ["train", "test"])
def test_real_shapes_dtypes_ranges(split):
    x, y = D.load_mnist(split)
    n = x.shape[0]
    assert n in (10000, 60000) if split == "train" else n == 10000
    assert x.shape == (n, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (n,) and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert set(y.unique().tolist()) == set(range(10))
    # grey levels are k / 255 exactly
    k = x * 255
    assert torch.equal(k, k.round())
    # MNIST's mean intensity is about 0.13 for both splits
    assert 0.12 < float(x.mean()) < 0.145


@needs_real
def test_real_test_label_counts():
    _, y = D.load_mnist("test")
    assert torch.bincount(y, minlength=10).tolist() == TEST_LABEL_COUNTS


@needs_real
def test_real_test_images_md5_and_parser_roundtrip():
    gz = REAL_DIR / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(gz.read_bytes()) if gz.is_file() else (REAL_DIR / "t10k-images-idx3-ubyte").read_bytes()
    assert hashlib.md5(raw).hexdigest() == TEST_IMAGES_MD5
    # the parsed tensor reproduces the file byte for byte
    x, _ = D.load_mnist("test")
    pixels = (x * 255).round().to(torch.uint8).numpy().tobytes()
    header = (2051).to_bytes(4, "big") + b"".join(v.to_bytes(4, "big") for v in (10000, 28, 28))
    assert hashlib.md5(header + pixels).hexdigest() == TEST_IMAGES_MD5


@needs_real
def test_real_sequential_and_static_binarisation():
    xs, y = D.load_sequential_mnist("test")
    x, y2 = D.load_mnist("test")
    assert xs.shape == (10000, 28, 28) and torch.equal(y, y2)
    assert torch.equal(xs[123, 7], x[123, 0, 7])
    b1, _ = D.load_mnist("test", binarize="static")
    b2, _ = D.load_mnist("test", binarize=True)
    assert torch.equal(b1, b2)
    # Bernoulli(p = x): mean within 4 standard errors of the grey mean
    se = math.sqrt(float((x * (1 - x)).sum())) / x.numel()
    assert abs(float(b1.mean()) - float(x.mean())) < 4 * se


# ----------------------------------------------------------------------------------------------------------------
# synthetic IDX files
# ----------------------------------------------------------------------------------------------------------------


def _idx_bytes(magic: int, dims, payload: bytes) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(int(v).to_bytes(4, "big") for v in dims) + payload


def _write(path: Path, content: bytes, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(content))
    else:
        path.write_bytes(content)
    return path


def _make_split(folder: Path, split: str, n: int, seed: int = 0, gz: bool = True, n_labels: int | None = None):
    """Write a synthetic split (random pixels, labels) and return the uint8 images and int64 labels."""
    g = torch.Generator().manual_seed(seed)
    imgs = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
    n_labels = n if n_labels is None else n_labels
    labs = torch.randint(0, 10, (n_labels,), generator=g, dtype=torch.uint8)
    img_name, lab_name = D.MNIST_FILES[split]
    _write(folder / img_name, _idx_bytes(2051, (n, 28, 28), imgs.numpy().tobytes()), gz)
    _write(folder / lab_name, _idx_bytes(2049, (n_labels,), labs.numpy().tobytes()), gz)
    return imgs, labs.to(torch.int64)


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("split", ["train", "test"])
def test_synthetic_roundtrip(tmp_path, split, gz):
    imgs, labs = _make_split(tmp_path, split, 7, seed=3, gz=gz)
    x, y = D.load_mnist(split, root=tmp_path)
    assert x.shape == (7, 1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.int64
    assert torch.equal(x, imgs.unsqueeze(1).to(torch.float32) / 255)
    assert torch.equal(y, labs)


def test_root_mnist_subfolder_and_env(tmp_path, monkeypatch):
    imgs, _ = _make_split(tmp_path / "envdata" / "mnist", "test", 4, seed=1)
    monkeypatch.setenv("VAEBOOK_DATA", str(tmp_path / "envdata"))
    x, _ = D.load_mnist("test")  # $VAEBOOK_DATA/mnist is searched first
    assert torch.equal(x, imgs.unsqueeze(1).float() / 255)
    x2, _ = D.load_mnist("test", root=tmp_path / "envdata")  # root/mnist is tried too
    assert torch.equal(x2, x)


def test_root_takes_precedence_over_env(tmp_path, monkeypatch):
    env_imgs, _ = _make_split(tmp_path / "env" / "mnist", "train", 5, seed=1)
    root_imgs, _ = _make_split(tmp_path / "root", "train", 6, seed=2)
    monkeypatch.setenv("VAEBOOK_DATA", str(tmp_path / "env"))
    x, _ = D.load_mnist("train", root=tmp_path / "root")
    assert x.shape[0] == 6 and torch.equal(x, root_imgs.unsqueeze(1).float() / 255)
    x_env, _ = D.load_mnist("train")
    assert x_env.shape[0] == 5 and torch.equal(x_env, env_imgs.unsqueeze(1).float() / 255)


def _assert_corrupt(exc_info, path: Path):
    msg = str(exc_info.value)
    assert str(path) in msg and "delete" in msg.lower()


def test_truncated_file(tmp_path):
    _make_split(tmp_path, "test", 5)
    img = tmp_path / "t10k-images-idx3-ubyte"
    good = gzip.decompress((tmp_path / "t10k-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    img.write_bytes(good[:-100])
    with pytest.raises(ValueError, match="header says") as e:
        D.load_mnist("test", root=tmp_path)
    assert isinstance(e.value, D.DataError)
    _assert_corrupt(e, img)


@pytest.mark.parametrize("gz", [True, False])
def test_header_declaring_zero_images_names_the_file(tmp_path, gz):
    # a well-formed IDX header for 0 images (and 0 labels): torch.frombuffer used to fail without the file's name
    img = _write(tmp_path / "t10k-images-idx3-ubyte", _idx_bytes(2051, (0, 28, 28), b""), gz)
    _write(tmp_path / "t10k-labels-idx1-ubyte", _idx_bytes(2049, (0,), b""), gz)
    with pytest.raises(D.DataError, match=r"declares 0 images") as e:
        D.load_mnist("test", root=tmp_path)
    _assert_corrupt(e, img)


def test_trailing_bytes(tmp_path):
    _make_split(tmp_path, "test", 5, gz=False)
    lab = tmp_path / "t10k-labels-idx1-ubyte"
    lab.write_bytes(lab.read_bytes() + b"\x00")
    with pytest.raises(D.DataError) as e:
        D.load_mnist("test", root=tmp_path)
    _assert_corrupt(e, lab)


def test_wrong_magic(tmp_path):
    _make_split(tmp_path, "train", 3)
    img = tmp_path / "train-images-idx3-ubyte.gz"
    body = gzip.decompress(img.read_bytes())
    img.write_bytes(gzip.compress((2049).to_bytes(4, "big") + body[4:]))
    with pytest.raises(ValueError, match="magic") as e:
        D.load_mnist("train", root=tmp_path)
    _assert_corrupt(e, img)


def test_wrong_image_size(tmp_path):
    _make_split(tmp_path, "train", 2)
    img = tmp_path / "train-images-idx3-ubyte.gz"
    img.write_bytes(gzip.compress(_idx_bytes(2051, (2, 27, 29), bytes(2 * 27 * 29))))
    with pytest.raises(D.DataError, match="28x28") as e:
        D.load_mnist("train", root=tmp_path)
    _assert_corrupt(e, img)


def test_label_out_of_range(tmp_path):
    _make_split(tmp_path, "train", 2)
    lab = tmp_path / "train-labels-idx1-ubyte.gz"
    lab.write_bytes(gzip.compress(_idx_bytes(2049, (2,), bytes([3, 10]))))
    with pytest.raises(D.DataError) as e:
        D.load_mnist("train", root=tmp_path)
    _assert_corrupt(e, lab)


@pytest.mark.parametrize("damage", ["not_gzip", "cut_stream"])
def test_bad_gzip(tmp_path, damage):
    _make_split(tmp_path, "test", 5)
    img = tmp_path / "t10k-images-idx3-ubyte.gz"
    content = img.read_bytes()
    img.write_bytes(b"this is not gzip data" if damage == "not_gzip" else content[: len(content) // 2])
    with pytest.raises(D.DataError, match="gzip") as e:
        D.load_mnist("test", root=tmp_path)
    _assert_corrupt(e, img)


def test_count_mismatch(tmp_path):
    _make_split(tmp_path, "train", 6, n_labels=5)
    with pytest.raises(ValueError, match="6 images but") as e:
        D.load_mnist("train", root=tmp_path)
    assert "train-images-idx3-ubyte" in str(e.value) and "train-labels-idx1-ubyte" in str(e.value)


def test_missing_files_offline(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError) as e:
        D.load_mnist("test", root=tmp_path / "empty")
    msg = str(e.value)
    assert "VAEBOOK_DATA" in msg and "VAEBOOK_OFFLINE" in msg
    assert "t10k-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg
    assert str(tmp_path / "empty") in msg
    assert list((tmp_path / "empty").iterdir()) == []  # nothing written


def test_missing_files_offline_lists_default_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("VAEBOOK_DATA", str(tmp_path / "env"))
    repo = tmp_path / "repo"
    (repo / "src" / "vaebook").mkdir(parents=True)
    (repo / "pyproject.toml").write_text("")
    monkeypatch.setattr(D, "_REPO_ROOT", repo)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        D.load_mnist("train")
    msg = str(e.value)
    for p in (tmp_path / "env" / "mnist", repo / "data" / "mnist", tmp_path / "data" / "mnist"):
        assert str(p) in msg


def test_installed_package_downloads_to_the_working_directory(tmp_path, monkeypatch):
    # installed from a wheel (no clone around the package): no "<site-packages>/../data", but ./data/mnist
    monkeypatch.delenv("VAEBOOK_DATA", raising=False)
    monkeypatch.setattr(D, "_REPO_ROOT", tmp_path / "lib")
    monkeypatch.chdir(tmp_path)
    assert D._download_dirs(None) == [tmp_path / "data" / "mnist"]
    assert tmp_path / "lib" / "data" / "mnist" not in D._search_dirs(None)


def test_only_one_file_of_split_is_missing(tmp_path):
    _make_split(tmp_path, "test", 3)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        D.load_mnist("test", root=tmp_path)


class _FakeResponse:
    def __init__(self, content: bytes):
        self.content, self.pos = content, 0

    def read(self, n=-1):
        chunk = self.content[self.pos:] if n < 0 else self.content[self.pos:self.pos + n]
        self.pos += len(chunk)
        return chunk

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _fake_mirror(monkeypatch, served: dict[str, bytes], md5s: dict[str, str]):
    calls = []

    def fake_urlopen(url, timeout):
        calls.append(url)
        name = url.rsplit("/", 1)[-1]
        if url.startswith(D.MNIST_MIRRORS[0]) and name in served:
            return _FakeResponse(served[name])
        raise OSError("unreachable mirror")

    monkeypatch.delenv("VAEBOOK_OFFLINE")
    monkeypatch.setattr(D, "_urlopen", fake_urlopen)
    monkeypatch.setattr(D, "MNIST_MD5", md5s)
    return calls


def test_download_verified_and_renamed(tmp_path, monkeypatch):
    src = tmp_path / "src"
    files = {}
    for split, n in (("train", 4), ("test", 3)):
        _make_split(src, split, n, seed=n)
    for p in src.iterdir():
        files[p.name] = p.read_bytes()
    calls = _fake_mirror(monkeypatch, files, {k: hashlib.md5(v).hexdigest() for k, v in files.items()})
    target = tmp_path / "dl"
    x, y = D.load_mnist("test", root=target)
    assert x.shape == (3, 1, 28, 28)
    assert sorted(p.name for p in target.iterdir()) == sorted(files)  # full set, no temporary files left
    assert len(calls) == 4
    # a second call reads the local files: no network
    D.load_mnist("train", root=target)
    assert len(calls) == 4


def test_download_with_wrong_md5_is_rejected(tmp_path, monkeypatch):
    src = tmp_path / "src"
    for split in ("train", "test"):
        _make_split(src, split, 2)
    files = {p.name: p.read_bytes() for p in src.iterdir()}
    md5s = {k: "0" * 32 for k in files}  # nothing served matches
    _fake_mirror(monkeypatch, files, md5s)
    target = tmp_path / "dl"
    with pytest.raises(FileNotFoundError, match="MD5"):
        D.load_mnist("train", root=target)
    assert not target.exists() or list(target.iterdir()) == []  # the bad download was not kept


def test_cache_returns_fresh_tensors_and_sees_file_changes(tmp_path):
    imgs, _ = _make_split(tmp_path, "test", 4, seed=5)
    x1, _ = D.load_mnist("test", root=tmp_path)
    x1.fill_(0.5)  # must not leak into the cache
    x2, _ = D.load_mnist("test", root=tmp_path)
    assert torch.equal(x2, imgs.unsqueeze(1).float() / 255)
    imgs3, _ = _make_split(tmp_path, "test", 4, seed=6)
    st = os.stat(tmp_path / "t10k-images-idx3-ubyte.gz")
    os.utime(tmp_path / "t10k-images-idx3-ubyte.gz", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    os.utime(tmp_path / "t10k-labels-idx1-ubyte.gz", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    x3, _ = D.load_mnist("test", root=tmp_path)
    assert torch.equal(x3, imgs3.unsqueeze(1).float() / 255)


@pytest.mark.parametrize("bad", ["validation", "Train", None, 1])
def test_bad_split(tmp_path, bad):
    with pytest.raises(ValueError, match="split") as e:
        D.load_mnist(bad, root=tmp_path)
    assert "train" in str(e.value) and "test" in str(e.value)


# ----------------------------------------------------------------------------------------------------------------
# binarisation and sequences
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture
def grey_split(tmp_path):
    imgs, labs = _make_split(tmp_path, "train", 40, seed=11)
    return tmp_path, imgs.unsqueeze(1).float() / 255


def test_static_binarisation(grey_split):
    root, grey = grey_split
    b1, _ = D.load_mnist("train", root=root, binarize="static")
    b2, _ = D.load_mnist("train", root=root, binarize=True)
    b3, _ = D.load_mnist("train", root=root, binarize="static")
    assert torch.equal(b1, b2) and torch.equal(b1, b3)
    assert b1.dtype == torch.float32 and b1.shape == grey.shape
    assert set(b1.unique().tolist()) == {0.0, 1.0}
    # a pixel can be 1 only where its grey level is > 0, and 0 only where it is < 1
    assert not (b1[grey == 0] == 1).any() and not (b1[grey == 1] == 0).any()
    se = math.sqrt(float((grey * (1 - grey)).sum())) / grey.numel()
    assert abs(float(b1.mean()) - float(grey.mean())) < 4 * se
    assert torch.equal(b1, (torch.rand(grey.shape, generator=torch.Generator().manual_seed(0)) < grey).float())


def test_threshold_binarisation(grey_split):
    root, grey = grey_split
    b, _ = D.load_mnist("train", root=root, binarize="threshold")
    assert torch.equal(b, (grey > 0.5).float())
    g, _ = D.load_mnist("train", root=root, binarize=False)
    assert torch.equal(g, grey)


@pytest.mark.parametrize("bad", ["dynamic", "yes", 0.5, "Static"])
def test_bad_binarize(grey_split, bad):
    root, _ = grey_split
    with pytest.raises(ValueError, match="binarize") as e:
        D.load_mnist("train", root=root, binarize=bad)
    assert "threshold" in str(e.value) and "static" in str(e.value)


def test_binarize_dynamic():
    grey = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    b = D.binarize_dynamic(grey)
    assert b.shape == grey.shape and b.dtype == grey.dtype
    assert set(b.unique().tolist()) <= {0.0, 1.0}
    se = math.sqrt(float((grey * (1 - grey)).sum())) / grey.numel()
    assert abs(float(b.mean()) - float(grey.mean())) < 4 * se
    # per-pixel: the empirical frequency over many draws tracks p (correlation near 1)
    p = grey[:2]
    freq = torch.stack([D.binarize_dynamic(p) for _ in range(200)]).mean(0)
    assert torch.corrcoef(torch.stack([freq.flatten(), p.flatten()]))[0, 1] > 0.95
    # reproducible with a generator, fresh without
    b1 = D.binarize_dynamic(grey, generator=torch.Generator().manual_seed(3))
    b2 = D.binarize_dynamic(grey, generator=torch.Generator().manual_seed(3))
    assert torch.equal(b1, b2) and not torch.equal(b1, D.binarize_dynamic(grey))
    assert torch.equal(D.binarize_dynamic(torch.zeros(3, 4)), torch.zeros(3, 4))
    assert torch.equal(D.binarize_dynamic(torch.ones(3, 4, dtype=torch.float64)), torch.ones(3, 4, dtype=torch.float64))


def test_sequential_view():
    x = torch.rand(5, 1, 28, 28)
    s = D.sequential_view(x)
    assert s.shape == (5, 28, 28)
    for t in range(28):
        assert torch.equal(s[:, t, :], x[:, 0, t, :])
    assert s.data_ptr() == x.data_ptr()  # a view of a contiguous input
    assert torch.equal(D.sequential_view(x.reshape(5, 784)), s)
    with pytest.raises(ValueError):
        D.sequential_view(torch.rand(5, 3, 28, 28))


def test_load_sequential_mnist_synthetic(tmp_path):
    imgs, labs = _make_split(tmp_path, "test", 6, seed=2)
    xs, y = D.load_sequential_mnist("test", root=tmp_path)
    assert xs.shape == (6, 28, 28) and torch.equal(y, labs)
    assert torch.equal(xs, imgs.float() / 255)


# ----------------------------------------------------------------------------------------------------------------
# loaders
# ----------------------------------------------------------------------------------------------------------------


def test_mnist_loaders(tmp_path):
    tr_imgs, tr_labs = _make_split(tmp_path, "train", 50, seed=1)
    te_imgs, _ = _make_split(tmp_path, "test", 20, seed=2)
    train, test = D.mnist_loaders(batch_size=8, root=tmp_path, num_train=30, num_test=12, seed=4)
    assert len(train.dataset) == 30 and len(test.dataset) == 12
    epoch1 = list(train)
    xb, yb = epoch1[0]
    assert xb.shape == (8, 1, 28, 28) and xb.dtype == torch.float32 and yb.shape == (8,) and yb.dtype == torch.int64
    assert [len(y) for _, y in epoch1] == [8, 8, 8, 6]
    # train: a permutation of the first 30 images, same order for the same seed, another for another seed
    order = torch.cat([y for _, y in epoch1])
    xs = torch.cat([x for x, _ in epoch1])
    assert not torch.equal(torch.cat([x for x, _ in train]), xs)  # reshuffled every epoch
    assert sorted(xs.flatten(1).sum(1).tolist()) == sorted((tr_imgs[:30].float() / 255).flatten(1).sum(1).tolist())
    train_same, _ = D.mnist_loaders(batch_size=8, root=tmp_path, num_train=30, seed=4)
    train_other, _ = D.mnist_loaders(batch_size=8, root=tmp_path, num_train=30, seed=5)
    assert torch.equal(torch.cat([x for x, _ in train_same]), xs)
    assert not torch.equal(torch.cat([x for x, _ in train_other]), xs)
    assert not torch.equal(xs, tr_imgs[:30].unsqueeze(1).float() / 255)  # shuffled
    assert sorted(order.tolist()) == sorted(tr_labs[:30].tolist())
    # test: file order, first num_test
    assert torch.equal(torch.cat([x for x, _ in test]), te_imgs[:12].unsqueeze(1).float() / 255)
    # binarize is passed on
    tb, _ = D.mnist_loaders(batch_size=8, root=tmp_path, binarize="threshold", num_train=30)
    assert set(torch.cat([x for x, _ in tb]).unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="num_train"):
        D.mnist_loaders(root=tmp_path, num_train=0)
    with pytest.raises(ValueError, match="batch_size"):
        D.mnist_loaders(batch_size=0, root=tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# 2-D toy data
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", D.TOY2D_NAMES)
def test_toy2d_shapes_and_seeds(name):
    for n in (1, 7, 1000):
        x = D.toy2d(name, n, seed=0)
        assert x.shape == (n, 2) and x.dtype == torch.float32 and torch.isfinite(x).all()
    a, b, c = D.toy2d(name, 500, seed=1), D.toy2d(name, 500, seed=1), D.toy2d(name, 500, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(D.toy2d(name, 500), D.toy2d(name, 500))  # seed=None: fresh draws
    state = torch.get_rng_state()
    D.toy2d(name, 100, seed=3)
    D.toy2d(name, 100)
    assert torch.equal(state, torch.get_rng_state())  # global RNG untouched
    g = torch.Generator().manual_seed(9)
    first, second = D.toy2d(name, 100, seed=g), D.toy2d(name, 100, seed=g)
    assert not torch.equal(first, second) and torch.equal(first, D.toy2d(name, 100, seed=9))


def test_toy2d_bad_arguments():
    with pytest.raises(ValueError) as e:
        D.toy2d("moons", 10)
    for name in D.TOY2D_NAMES:
        assert name in str(e.value)
    for bad_n in (0, -3, 2.5, True, "10"):
        with pytest.raises(ValueError, match="n must be a positive int"):
            D.toy2d("rings", bad_n)
    assert D.TOY2D_NAMES == ("8gaussians", "2spirals", "checkerboard", "rings")


def test_8gaussians_near_centres():
    x = D.toy2d("8gaussians", 20000, seed=0).double()
    c = D.EIGHT_GAUSSIANS_CENTRES
    assert torch.allclose(c.norm(dim=1), torch.full((8,), 2 / 1.414, dtype=torch.float64))
    d = torch.cdist(x, c)
    dist, k = d.min(dim=1)
    sd = 0.02 / 1.414
    assert float(dist.max()) < 6 * sd
    # radial distance to the assigned centre: E ||e||^2 = 2 sd^2
    assert abs(float((dist ** 2).mean()) / (2 * sd ** 2) - 1) < 0.05
    freq = torch.bincount(k, minlength=8).double() / x.shape[0]
    assert float((freq - 1 / 8).abs().max()) < 4 * math.sqrt(1 / 8 * 7 / 8 / x.shape[0])


def test_8gaussians_log_density_integrates_to_one_and_matches_samples():
    h = 0.005
    grid = torch.arange(-2 + h / 2, 2, h, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    lp = D.toy2d_log_density("8gaussians", torch.stack([xx, yy], dim=-1))
    assert lp.shape == xx.shape and lp.dtype == torch.float64
    assert abs(float(lp.exp().sum()) * h * h - 1) < 1e-3
    # E_p[log p] = -(log 8 + 1 + log(2 pi sd^2)) for well-separated modes; Var[log p] = 1 (chi^2_2 / 2)
    n = 20000
    s = D.toy2d("8gaussians", n, seed=1)
    lps = D.toy2d_log_density("8gaussians", s)
    assert lps.dtype == torch.float32 and lps.shape == (n,)
    sd = 0.02 / 1.414
    expected = -(math.log(8) + 1 + math.log(2 * math.pi * sd ** 2))
    assert abs(float(lps.double().mean()) - expected) < 5 / math.sqrt(n)
    # a point far from every mode has (numerically) zero density
    assert float(D.toy2d_log_density("8gaussians", torch.zeros(2))) < -1000


def test_checkerboard_support_and_density():
    n = 40000
    x = D.toy2d("checkerboard", n, seed=0)
    assert float(x.abs().max()) <= 4
    lp = D.toy2d_log_density("checkerboard", x)
    assert torch.all(lp == math.log(1 / 32))
    # the 8 squares are equally likely, and the other 8 are empty
    cell = (torch.floor(x.double() / 2).clamp(-2, 1) + 2).long()
    counts = torch.bincount(cell[:, 0] * 4 + cell[:, 1], minlength=16).reshape(4, 4)
    parity = (torch.arange(4)[:, None] + torch.arange(4)[None, :]) % 2 == 0
    assert counts[~parity].sum() <= 2  # only float rounding onto a square's edge
    freq = counts[parity].double() / n
    assert float((freq - 1 / 8).abs().max()) < 4 * math.sqrt(1 / 8 * 7 / 8 / n)
    # log density integrates to one (midpoint rule; no grid point lies on an edge)
    h = 0.02
    grid = torch.arange(-5 + h / 2, 5, h, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    dens = D.toy2d_log_density("checkerboard", torch.stack([xx, yy], dim=-1)).exp()
    assert abs(float(dens.sum()) * h * h - 1) < 1e-2
    # known points: inside / outside
    pts = torch.tensor([[0.5, 0.5], [-0.5, -0.5], [0.5, -0.5], [3.5, -3.5], [4.5, 0.5], [1.0, 2.5]])
    assert torch.isfinite(D.toy2d_log_density("checkerboard", pts)).tolist() == [True, True, False, False, False,
                                                                                    False]


def test_rings_radii_and_weights():
    n = 20000
    x = D.toy2d("rings", n, seed=0).double()
    r = x.norm(dim=1)
    radii = torch.tensor([0.75, 1.5, 2.25, 3.0], dtype=torch.float64)
    dr, k = (r[:, None] - radii).abs().min(dim=1)
    assert float(dr.max()) < 6 * 0.08
    # radial residual ~ N(0, 0.08^2) (approximately: curvature bias is tiny at these radii)
    resid = r - radii[k]
    assert abs(float(resid.std()) / 0.08 - 1) < 0.05
    freq = torch.bincount(k, minlength=4).double() / n
    assert float((freq - 0.25).abs().max()) < 4 * math.sqrt(0.25 * 0.75 / n)
    # angles are spread uniformly
    ang = torch.atan2(x[:, 1], x[:, 0])
    assert abs(float(torch.cos(ang).mean())) < 0.05 and abs(float(torch.sin(ang).mean())) < 0.05


def test_2spirals_structure():
    n = 20000
    x = D.toy2d("2spirals", n, seed=0).double()
    m = n // 2
    # the second half is the point reflection of the first (same uniforms), before the 0.1 N(0, I) noise
    s = x[:m] + x[m:]
    assert abs(float(s.std()) / (0.1 * math.sqrt(2)) - 1) < 0.05
    assert abs(float(s.mean())) < 0.01
    # noiseless radius t/3 with t = sqrt(U) 3 pi <= 3 pi (+ the 0.5 U offsets): the spread is bounded
    assert float(x.norm(dim=1).max()) < (3 * math.pi + 0.75) / 3 + 0.6
    # t = sqrt(U) * 3pi makes large radii more likely: the median radius is above the mid radius
    assert float(x.norm(dim=1).median()) > 0.55 * math.pi
    with pytest.raises(NotImplementedError, match="closed"):
        D.toy2d_log_density("2spirals", x)


def test_log_density_arguments():
    with pytest.raises(NotImplementedError, match="closed"):
        D.toy2d_log_density("rings", torch.zeros(3, 2))
    with pytest.raises(ValueError, match="8gaussians"):
        D.toy2d_log_density("moons", torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        D.toy2d_log_density("8gaussians", torch.zeros(3, 3))
    x = torch.zeros(2, 5, 2, requires_grad=True)
    lp = D.toy2d_log_density("8gaussians", x + torch.tensor([2 / 1.414, 0.0]))
    assert lp.shape == (2, 5)
    lp.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_rings_remainder_goes_to_innermost_ring():
    # n = 7: one point on each of the three outer rings and four on the innermost (radius 0.75) before resampling
    radii = torch.tensor([0.75, 1.5, 2.25, 3.0])
    g = torch.Generator().manual_seed(0)
    x = torch.cat([D.toy2d("rings", 7, seed=g) for _ in range(400)])
    k = (x.norm(dim=1)[:, None] - radii).abs().argmin(dim=1)
    freq = torch.bincount(k, minlength=4).double() / k.numel()
    assert abs(float(freq[0]) - 4 / 7) < 0.05 and float((freq[1:] - 1 / 7).abs().max()) < 0.05
