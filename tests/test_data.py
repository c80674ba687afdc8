"""Data sets: CIFAR in the official format, Tiny ImageNet's layout, image folders, digits, splits, augmentation."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shallowdeep.core.errors import UserError
from shallowdeep.data import augment, batches, carve_validation, list_datasets, load_dataset


@pytest.mark.parametrize("kind,classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_official_format(fake_cifar, kind, classes):
    root, truth = fake_cifar(kind)
    ds = load_dataset(kind, root)
    assert ds.num_classes == classes and ds.image_size == 32
    assert len(ds.train) + len(ds.val) == len(truth["train_labels"])
    assert len(ds.test) == len(truth["test_labels"])
    # images in HWC order, exactly the file's pixels; val ids point back into the training set
    expect = torch.from_numpy(truth["train"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy())
    assert torch.equal(ds.val.images, expect[ds.val.ids])
    assert ds.val.labels.tolist() == [truth["train_labels"][i] for i in ds.val.ids.tolist()]
    assert ds.test.labels.tolist() == truth["test_labels"]
    mean = {"cifar10": (0.485, 0.456, 0.406), "cifar100": (0.507, 0.487, 0.441)}[kind]
    assert ds.mean == mean


@pytest.mark.parametrize(
    "kind,archive", [("cifar10", "cifar-10-python.tar.gz"), ("cifar100", "cifar-100-python.tar.gz")]
)
def test_cifar_offline_error_names_file_and_place(tmp_path, monkeypatch, kind, archive):
    import torchvision.datasets.utils as U

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(U, "urlopen", offline, raising=False)
    monkeypatch.setattr(U.urllib.request, "urlopen", offline)
    with pytest.raises(UserError) as e:
        load_dataset(kind, tmp_path / "data")
    msg = str(e.value)
    assert archive in msg and str(tmp_path / "data") in msg and "\n" not in msg


def test_tinyimagenet_real_slice(tiny_root):
    before = sorted(str(p.relative_to(tiny_root)) for p in tiny_root.rglob("*"))
    ds = load_dataset("tinyimagenet", tiny_root)
    after = sorted(str(p.relative_to(tiny_root)) for p in tiny_root.rglob("*"))
    assert before == after, "the user's files must not be moved or rewritten"
    wnids = (tiny_root / "wnids.txt").read_text().split()
    assert ds.classes == sorted(wnids) and ds.image_size == 64
    assert len(ds.train) + len(ds.val) == 500 and len(ds.test) == 500
    assert ds.train.images.shape[1:] == (64, 64, 3)  # grayscale files come out RGB
    # every test label matches val_annotations.txt
    ann = dict(line.split("\t")[:2] for line in (tiny_root / "val" / "val_annotations.txt").read_text().splitlines())
    files = sorted(ann, key=lambda f: list(ann).index(f))
    assert [ds.classes[i] for i in ds.test.labels.tolist()] == [ann[f] for f in files]
    # pixels of one validation image equal the file's (converted to RGB)
    first = np.asarray(Image.open(tiny_root / "val" / "images" / files[0]).convert("RGB"))
    assert torch.equal(ds.test.images[0], torch.from_numpy(first.copy()))
    assert ds.jitter == 0.2 and ds.pad == 8


def test_tinyimagenet_missing_is_clear(tmp_path):
    with pytest.raises(UserError, match="no Tiny ImageNet in"):
        load_dataset("tinyimagenet", tmp_path)


def test_imagefolder_real_cifar10_jpegs(cifar10_jpeg):
    ds = load_dataset(f"imagefolder:{cifar10_jpeg}")
    assert ds.classes == sorted(
        ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    )
    assert len(ds.train) + len(ds.val) == 1000 and len(ds.test) == 200
    assert ds.image_size == 32
    # channel statistics of real CIFAR images, computed from the training split
    assert 0.40 < ds.mean[0] < 0.55 and 0.18 < ds.std[0] < 0.30
    # streamed, the same files give the same pixels, split and labels
    st = load_dataset(f"imagefolder:{cifar10_jpeg}", mode="stream", image_size=32)
    idx = torch.arange(0, len(ds.test), 7)
    assert torch.equal(st.test.images[idx], ds.test.images[idx]) and torch.equal(st.test.labels, ds.test.labels)
    assert torch.equal(st.val.ids, ds.val.ids)


def _write_folder(root: Path, classes=("a", "b"), n=6, size=20, mode="RGB") -> Path:
    rng = np.random.default_rng(0)
    for part in ("train", "test"):
        for c in classes:
            (root / part / c).mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(arr).convert(mode).save(root / part / c / f"{i}.png")
    return root


def test_imagefolder_generated_and_resized(tmp_path):
    root = _write_folder(tmp_path / "f", mode="L")
    ds = load_dataset(f"imagefolder:{root}")
    assert ds.image_size == 20 and ds.train.images.shape[-1] == 3
    ds16 = load_dataset(f"imagefolder:{root}", image_size=16)
    assert ds16.image_size == 16 and ds16.test.images.shape[1:] == (16, 16, 3)


@pytest.mark.parametrize(
    "spec,msg",
    [
        ("imagefolder:/nonexistent/folder", "is not a folder"),
        ("imagefolder", "needs a path"),
        ("cifar11", "unknown data set 'cifar11'"),
    ],
)
def test_bad_data_names(spec, msg):
    with pytest.raises(UserError, match=msg):
        load_dataset(spec)


def test_imagefolder_unreadable_image(tmp_path):
    root = _write_folder(tmp_path / "f")
    (root / "train" / "a" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match="cannot read image .*broken.png"):
        load_dataset(f"imagefolder:{root}")


def test_digits_embedded_default(digits):
    assert digits.num_classes == 10 and digits.image_size == 32 and not digits.flip
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797
    ids = [set(s.ids.tolist()) for s in (digits.train, digits.val, digits.test)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])


def test_digits_come_from_the_cache_after_the_first_load_and_a_damaged_entry_is_rebuilt(tmp_path, monkeypatch):
    """The cached table gives scikit-learn's pixels and labels; a later process reads it without
    importing scikit-learn; a truncated or wrong-shaped entry is built again, never trusted."""
    import os
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    monkeypatch.setenv("SHALLOWDEEP_CACHE", str(tmp_path))
    d = load_digits()
    want = (torch.as_tensor(d.images, dtype=torch.float32) * (255.0 / 16.0)).round().to(torch.uint8)
    first = load_dataset("digits", image_size=8)
    (entry,) = tmp_path.glob("digits-*.npy")
    every = torch.cat([first.train.images, first.val.images, first.test.images])[..., 0]
    ids = torch.cat([first.train.ids, first.val.ids, first.test.ids])
    assert torch.equal(every, want[ids]) and torch.equal(
        torch.cat([first.train.labels, first.val.labels, first.test.labels]), torch.as_tensor(d.target)[ids]
    )
    probe = "import sys; from shallowdeep.data import load_dataset as f; f('digits'); print('sklearn' in sys.modules)"
    env = os.environ | {"SHALLOWDEEP_CACHE": str(tmp_path)}
    child = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert child.stdout.strip() == "False", child.stderr
    for damage in (entry.read_bytes()[:100], None):
        if damage is None:
            np.save(entry, np.zeros((1797, 64), np.uint8), allow_pickle=False)
        else:
            entry.write_bytes(damage)
        again = load_dataset("digits", image_size=8)
        assert torch.equal(again.test.images, first.test.images) and np.load(entry).shape == (1797, 65)


def test_validation_split_fixed_and_disjoint(digits):
    again = load_dataset("digits")
    assert torch.equal(again.val.ids, digits.val.ids) and torch.equal(again.test.ids, digits.test.ids)
    assert len(digits.val) == round(0.1 * (len(digits.train) + len(digits.val)))


def test_carve_validation_never_touches_other_data(digits):
    tr, va = carve_validation(digits.train, 0.25, seed=3)
    assert len(tr) + len(va) == len(digits.train)
    assert set(tr.ids.tolist()).isdisjoint(va.ids.tolist())


def test_augment_crop_and_flip():
    g = torch.Generator().manual_seed(0)
    img = torch.arange(8 * 8 * 3, dtype=torch.int64).reshape(1, 8, 8, 3).remainder(256).to(torch.uint8)
    imgs = img.expand(64, -1, -1, -1).contiguous()
    out = augment(imgs, pad=2, flip=True, jitter=0.0, generator=g)
    assert out.shape == (64, 8, 8, 3) and out.dtype == torch.float32
    # every output is a shifted (possibly mirrored) window of the zero-padded input
    padded = torch.nn.functional.pad(img[0].float() / 255, (0, 0, 2, 2, 2, 2))
    windows = {(dy, dx, f) for dy in range(5) for dx in range(5) for f in (False, True)}
    seen = set()
    for o in out:
        for dy, dx, f in windows:
            w = padded[dy : dy + 8, dx : dx + 8]
            if f:
                w = w.flip(1)
            if torch.equal(o, w):
                seen.add((dy, dx, f))
                break
        else:
            raise AssertionError("an augmented image is no crop of the padded input")
    assert any(f for _, _, f in seen) and any(not f for _, _, f in seen)
    no_flip = augment(imgs, pad=0, flip=False, jitter=0.0, generator=g)
    assert torch.equal(no_flip, imgs.float() / 255)


def test_jitter_changes_colours_within_range():
    g = torch.Generator().manual_seed(0)
    imgs = torch.full((16, 4, 4, 3), 128, dtype=torch.uint8)
    imgs[:, :, :, 0] = 200
    out = augment(imgs, pad=0, flip=False, jitter=0.2, generator=g)
    assert not torch.allclose(out, imgs.float() / 255) and out.min() >= 0 and out.max() <= 1


def test_batches_normalised_channels_last(digits):
    x, y = next(iter(batches(digits, "val", 16)))
    assert x.shape == (16, 3, 32, 32) and y.shape == (16,)
    assert x.is_contiguous(memory_format=torch.channels_last)
    mean = torch.tensor(digits.mean).view(1, 3, 1, 1)
    std = torch.tensor(digits.std).view(1, 3, 1, 1)
    raw = digits.val.images[:16].permute(0, 3, 1, 2).float() / 255
    assert torch.allclose(x, (raw - mean) / std)


def test_batches_travel_as_stored_and_are_normalised_where_they_go(digits, monkeypatch):
    """To another device a batch goes as uint8 (a quarter of the floats' bytes) and is normalised
    there ("meta" stands in for a GPU here: the same path, no arithmetic)."""
    from shallowdeep.data import batching

    seen = []
    real = batching.normalize
    monkeypatch.setattr(
        batching,
        "normalize",
        lambda images, m, s: seen.append((images.dtype, images.device.type, m.device.type)) or real(images, m, s),
    )
    x, y = next(iter(batches(digits, "val", 16, device="meta")))
    assert seen == [(torch.uint8, "meta", "meta")]
    assert x.device.type == y.device.type == "meta" and x.shape == (16, 3, 32, 32)


def test_shuffled_batches_repeat_with_the_same_seed(digits):
    a = [y for _, y in batches(digits, "train", 64, train=True, generator=torch.Generator().manual_seed(5))]
    b = [y for _, y in batches(digits, "train", 64, train=True, generator=torch.Generator().manual_seed(5))]
    assert all(torch.equal(p, q) for p, q in zip(a, b))


def test_registry_lists_every_data_set():
    assert set(list_datasets()) == {"cifar10", "cifar100", "tinyimagenet", "imagefolder", "digits"}


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    """A 16-bit grey PNG keeps its contrast (scaled to 8 bits), instead of 99 % of pixels clipping to 255."""
    from PIL import Image

    from shallowdeep.data import read_image

    ramp = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    img = read_image(tmp_path / "deep.png")
    assert img.dtype == np.uint8 and img.shape == (32, 32, 3)
    assert (img == 255).mean() < 0.01 and img.min() == 0 and img.max() >= 250
    assert np.corrcoef(img[..., 0].ravel(), ramp.ravel())[0, 1] > 0.99


def test_channel_stats_match_a_float64_computation():
    from shallowdeep.data import channel_stats

    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (50, 9, 9, 3), dtype=torch.uint8, generator=g)
    images[..., 2] = 77  # a constant channel: std 0
    x = images.reshape(-1, 3).double() / 255
    mean, std = channel_stats(images)
    assert np.allclose(mean, x.mean(0).tolist(), rtol=0, atol=1e-12)
    assert np.allclose(std, x.std(0).tolist(), rtol=0, atol=1e-12) and std[2] == 0


def test_jpegs_decode_to_the_pixels_pil_gives(tmp_path):
    """Image folders decode JPEGs through torchvision (faster); the pixels must be PIL's, which
    prediction and the deployed runtime use."""
    from shallowdeep.core.images import read_fitted
    from shallowdeep.data.decode import _decode, _decode_jpegs

    rng = np.random.default_rng(0)
    smooth = np.clip(np.cumsum(rng.integers(-9, 10, (40, 40, 3)), axis=1) + 128, 0, 255).astype(np.uint8)
    files = {
        "rgb420.jpg": (Image.fromarray(smooth), {}),
        "rgb444.jpeg": (Image.fromarray(smooth), {"subsampling": 0}),
        "progressive.jpg": (Image.fromarray(smooth), {"progressive": True, "quality": 60}),
        "grey.jpg": (Image.fromarray(smooth[..., 0]), {}),
        "wide.jpg": (Image.fromarray(smooth[:30]), {}),
        "cmyk.jpg": (Image.fromarray(smooth).convert("CMYK"), {}),
        "odd.png": (Image.fromarray(smooth), {}),
    }
    paths = []
    for name, (im, kw) in files.items():
        im.save(tmp_path / name, **kw)
        paths.append(tmp_path / name)
    decoded = _decode_jpegs([p for p in paths if p.suffix != ".png"])
    assert [a is not None for a in decoded] == [True, True, True, True, True, False]  # CMYK is left to PIL
    for size in (40, 24):
        with pytest.warns(UserWarning, match="not square"):
            got = _decode(paths, size)
        for p, a in zip(paths, got):
            assert np.array_equal(a, read_fitted(p, size)[0]), (p.name, size)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    with pytest.raises(UserError, match="cannot read image .*broken.jpg"):
        _decode([paths[0], tmp_path / "broken.jpg"], 40)
    # a header claiming 30000 x 30000 pixels: PIL's decompression-bomb guard still decides
    from shallowdeep.data.decode import _jpeg_size

    raw = bytearray(paths[0].read_bytes())
    sof = raw.index(b"\xff\xc0")
    assert _jpeg_size(bytes(raw)) == (40, 40)
    raw[sof + 5 : sof + 9] = (30000).to_bytes(2, "big") * 2
    (tmp_path / "bomb.jpg").write_bytes(bytes(raw))
    assert _jpeg_size(bytes(raw)) == (30000, 30000) and _decode_jpegs([tmp_path / "bomb.jpg"]) == [None]
    with pytest.raises(UserError, match="bomb.jpg claims to be too large"):
        _decode([tmp_path / "bomb.jpg"], 40)


def test_many_small_images_decode_in_worker_processes_to_the_same_pixels(tmp_path, monkeypatch):
    """On a machine of many cores a large folder of small images decodes in worker processes (PIL,
    shares handed over as .npy files): the same array, in the same order, as one process makes; a
    worker that fails (a bad file) leaves the folder to this process, whose error names the file."""
    import tempfile

    from shallowdeep.data import decode

    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where the shares are handed over
    rng = np.random.default_rng(1)
    paths = []
    for i in range(23):  # JPEGs and a PNG, square and not (cropped: the warning counts them)
        a = np.clip(np.cumsum(rng.integers(-9, 10, (32, 32 + 8 * (i % 3 == 0), 3)), axis=1) + 128, 0, 255)
        p = tmp_path / (f"{i:02d}.png" if i == 5 else f"{i:02d}.jpg")
        Image.fromarray(a.astype(np.uint8)).save(p)
        paths.append(p)
    monkeypatch.setattr(decode, "_decode_processes", lambda: 1)
    with pytest.warns(UserWarning, match="8 of 23 images are not square"):
        here = decode._decode(paths, 32)
    monkeypatch.setattr(decode, "PROCESS_MIN_FILES", 10)
    monkeypatch.setattr(decode, "_decode_processes", lambda: 3)
    shares = []
    real = decode._decode_in_processes
    monkeypatch.setattr(decode, "_decode_in_processes", lambda p, s: shares.append(len(p)) or real(p, s))
    with pytest.warns(UserWarning, match="8 of 23 images are not square"):
        there = decode._decode(paths, 32)
    assert shares == [23] and there.dtype == np.uint8 and np.array_equal(here, there)
    by_workers = real(paths, 32)  # not None: the workers decoded it (a failure would be hidden above)
    assert by_workers is not None and np.array_equal(np.stack([a for a, _ in by_workers]), here)
    assert sum(cropped for _, cropped in by_workers) == 8
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    assert real(paths + [tmp_path / "broken.jpg"], 32) is None
    with pytest.raises(UserError, match="cannot read image .*broken.jpg"):
        decode._decode(paths + [tmp_path / "broken.jpg"], 32)
    assert not list((tmp_path / "tmp").glob("shallowdeep-decode-*"))  # the shares' folders are gone


def test_reuse_loaded_reads_a_data_set_once_inside_it_only(tmp_path, monkeypatch):
    """Inside ``reuse_loaded`` the same arguments give the same data set without reading the files
    again (another size or mode is read anew); outside, every call reads them."""
    from shallowdeep.data import registry as data_mod

    reads = []
    real = data_mod._DATASETS["digits"]
    monkeypatch.setitem(data_mod._DATASETS, "digits", lambda *a: reads.append(a) or real(*a))
    with data_mod.reuse_loaded():
        a = data_mod.load_dataset("digits")
        assert data_mod.load_dataset("digits", download=False) is a and len(reads) == 1
        b = data_mod.load_dataset("digits", image_size=16)
        assert b.image_size == 16 and len(reads) == 2
        assert data_mod.load_dataset("digits", image_size=16) is b and len(reads) == 2
    c = data_mod.load_dataset("digits")
    assert c is not a and len(reads) == 3 and torch.equal(c.train.images, a.train.images)
