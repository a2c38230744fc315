"""The augment presets: outputs, what the transforms do, clips, seeds, bad configs, the preview grid."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from data.randaugment import OPS, RandAugment
from data.transforms import Pipeline

PRESETS = ["none", "cifar", "cifar_strong", "imagenet"]
MEAN, STD = (0.2, 0.2, 0.2), (0.35, 0.35, 0.35)  # conf/data/digits.yaml


def random_uint8(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def pixels(x: torch.Tensor) -> torch.Tensor:
    """A pipeline output ``(C, [T,] H, W)`` back to [0, 255] pixel values ``([T,] H, W, C)``."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    return (x * torch.tensor(STD).view(shape) + torch.tensor(MEAN).view(shape)).movedim(0, -1) * 255


def pipelines(make_cfg, preset, *overrides):
    cfg = make_cfg(f"augment={preset}", "data=digits", *overrides)
    return instantiate(cfg.augment.train), instantiate(cfg.augment.eval)


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_give_normalised_float_tensors_of_the_configured_size(make_cfg, preset):
    train, evaluate = pipelines(make_cfg, preset, "data.image_size=24")
    image, clip = random_uint8((24, 24, 3)), random_uint8((4, 24, 24, 3))
    torch.manual_seed(0)
    for pipeline in (train, evaluate):
        for _ in range(5):
            x, c = pipeline(image), pipeline(clip)
            assert x.shape == (3, 24, 24) and c.shape == (3, 4, 24, 24)
            assert x.dtype == c.dtype == torch.float32
            for p in (pixels(x), pixels(c)):
                assert p.min() >= -1e-3 and p.max() <= 255 + 1e-3
    # No transforms: exactly (x / 255 - mean) / std.
    expected = (torch.from_numpy(image).permute(2, 0, 1) / 255 - 0.2) / 0.35
    torch.testing.assert_close(evaluate(image), expected)


def test_imagenet_preset_reads_sizes_from_the_data_config(make_cfg):
    train, evaluate = pipelines(make_cfg, "imagenet", "data.image_size=20", "+data.resize_size=24")
    image = random_uint8((30, 40, 3))
    assert train(image).shape == evaluate(image).shape == (3, 20, 20)
    # eval: short side resized to 24, then the centre 20x20.
    resized = A.SmallestMaxSize(max_size=24)(image=image)["image"]
    top, left = (resized.shape[0] - 20) // 2, (resized.shape[1] - 20) // 2
    torch.testing.assert_close(
        pixels(evaluate(image)), torch.from_numpy(resized[top : top + 20, left : left + 20]).float()
    )


def pad_crop_flip_params(padded: np.ndarray, out: np.ndarray, size: int) -> set[tuple[int, int, bool]]:
    """Every (top, left, flipped) for which ``out`` is that crop (and flip) of ``padded`` (HWC last)."""
    found = set()
    for top in range(padded.shape[-3] - size + 1):
        for left in range(padded.shape[-2] - size + 1):
            crop = padded[..., top : top + size, left : left + size, :]
            for flipped in (False, True):
                if np.array_equal(crop[..., ::-1, :] if flipped else crop, out):
                    found.add((top, left, flipped))
    return found


def reflect_pad(array: np.ndarray, pad: int = 4) -> np.ndarray:
    width = [(0, 0)] * (array.ndim - 3) + [(pad, pad), (pad, pad), (0, 0)]
    return np.pad(array, width, mode="reflect")


def test_cifar_batches_hold_pad_crop_flips_of_their_own_images_and_labels(make_cfg):
    """Through the real DataModule: every sample is an exact crop/flip of the padded image of its index."""
    from trainer.run import build_datamodule

    # The per-sample albumentations path (data.in_memory would translate this preset to batch ops).
    cfg = make_cfg("augment=cifar", "data=digits", "data.batch_size=16", "data.in_memory=false")
    datamodule = build_datamodule(cfg.data, cfg.augment)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    dataset = datamodule.train_set
    assert torch.equal(batch["target"], torch.from_numpy(dataset.targets[batch["index"].numpy()]))
    flips = set()
    for x, i in zip(batch["input"], batch["index"], strict=True):
        out = pixels(x).round().to(torch.uint8).numpy()
        params = pad_crop_flip_params(reflect_pad(dataset.images[int(i)]), out, 32)
        assert params, f"sample {int(i)} is no pad/crop/flip of its image"
        flips |= {f for _, _, f in params}
    assert flips == {False, True}


def test_clip_frames_get_the_same_crop_and_flip(make_cfg):
    train, _ = pipelines(make_cfg, "cifar")
    clip = random_uint8((5, 32, 32, 3))  # distinct frames: a crop offset identifies itself
    padded = reflect_pad(clip)
    seen = set()
    torch.manual_seed(0)
    for _ in range(8):
        out = pixels(train(clip)).round().to(torch.uint8).numpy()  # (T, H, W, C)
        per_frame = [pad_crop_flip_params(padded[t], out[t], 32) for t in range(len(clip))]
        assert len(per_frame[0]) == 1
        assert all(p == per_frame[0] for p in per_frame), f"frames got different crops/flips: {per_frame}"
        seen |= per_frame[0]
    assert len(seen) > 1


@pytest.mark.parametrize("preset", ["cifar_strong", "imagenet"])
def test_clip_frames_share_every_random_draw(make_cfg, preset):
    """A clip of identical frames stays a clip of identical frames: crop, flip, RandAugment ops, colour
    jitter and cutout were drawn once for the whole clip."""
    train, _ = pipelines(make_cfg, preset)
    clip = np.repeat(random_uint8((32, 32, 3))[None], 4, axis=0)
    torch.manual_seed(0)
    outs = [train(clip) for _ in range(10)]
    for out in outs:
        for t in range(1, 4):
            assert torch.equal(out[:, t], out[:, 0])
    assert len({o.numpy().tobytes() for o in outs}) >= 8  # and the draws do differ


def test_augmentation_is_reproducible_under_a_seed(make_cfg):
    images = [random_uint8((32, 32, 3), seed=s) for s in range(4)]

    def draws(seed):
        train, _ = pipelines(make_cfg, "cifar_strong")
        torch.manual_seed(seed)
        return [train(im) for im in images for _ in range(3)]

    a, b, c = draws(7), draws(7), draws(8)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_loader_workers_are_reproducible_and_draw_differently(make_cfg):
    from trainer.run import build_datamodule

    def first_batches(seed):
        cfg = make_cfg("augment=cifar_strong", "data=digits", "data.num_workers=2", f"seed={seed}", "data.batch_size=8")
        datamodule = build_datamodule(cfg.data, cfg.augment)
        datamodule.setup("fit")
        it = iter(datamodule.train_dataloader())
        return [next(it) for _ in range(2)]

    a, b = first_batches(0), first_batches(0)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x["index"], y["index"]) and torch.equal(x["input"], y["input"])
    # Same images, different seed: other draws.
    datamodule_images = a[0]["input"]
    c = first_batches(1)
    assert not torch.equal(datamodule_images, c[0]["input"])


@pytest.mark.parametrize("op", [o for o in OPS if o != "identity"])
def test_each_randaugment_op_changes_images(op):
    image = random_uint8((32, 32, 3))
    compose = A.Compose([RandAugment(num_ops=1, magnitude=20, ops=[op])], seed=0)
    assert not np.array_equal(compose(image=image)["image"], image)


def test_randaugment_applies_num_ops_and_rejects_unknown_ops():
    image = random_uint8((32, 32, 3))
    assert np.array_equal(A.Compose([RandAugment(num_ops=0)], seed=0)(image=image)["image"], image)
    assert np.array_equal(A.Compose([RandAugment(num_ops=3, ops=["identity"])], seed=0)(image=image)["image"], image)
    with pytest.raises(ValueError, match="unknown ops \\['blurr'\\]"):
        RandAugment(ops=["rotate", "blurr"])


BAD = {
    "unknown name": (
        ["augment.train.transforms.flip._target_=albumentations.HorizontalFlipp"],
        ["albumentations.HorizontalFlipp", "augment.train.transforms.flip"],
    ),
    "unknown argument": (["+augment.train.transforms.flip.prob=0.3"], ["'flip'", "HorizontalFlip", "prob"]),
    "bad value": (
        ["augment.train.transforms.flip.p=3"],
        ["HorizontalFlip", "augment.train.transforms.flip", "input_value=3"],
    ),
    "normalize": (
        ["+augment.train.transforms.norm={_target_: albumentations.Normalize}"],
        ["'norm'", "Normalize"],
    ),
    "not albumentations": (
        ["+augment.train.transforms.t={_target_: torchvision.transforms.v2.RandomHorizontalFlip}"],
        ["'t'", "RandomHorizontalFlip", "not an albumentations transform"],
    ),
    "randaugment": (["augment=cifar_strong", "augment.magnitude=40"], ["RandAugment", "magnitude=40"]),
    "mixing": (["augment.mixup_alpha=-0.2"], ["augment.mixup_alpha=-0.2"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_transform_config_fails_before_training_naming_it(make_cfg, case):
    from trainer.run import train

    overrides, expected = BAD[case]
    cfg = make_cfg("augment=cifar", *overrides)
    with pytest.raises(Exception) as err:  # noqa: PT011 (Hydra wraps the transform's own error)
        train(cfg)
    for text in expected:
        assert text in str(err.value), f"{text!r} not in: {err.value}"
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


def test_pipeline_accepts_a_list_and_skips_removed_entries():
    pipeline = Pipeline(transforms=[A.HorizontalFlip(p=1.0), None], mean=MEAN, std=STD)
    image = random_uint8((8, 8, 3))
    torch.testing.assert_close(
        pixels(pipeline(image)), torch.from_numpy(image[:, ::-1].copy()).float(), atol=1e-3, rtol=0
    )
    with pytest.raises(ValueError, match="expected an image"):
        pipeline(random_uint8((8, 8)))


def test_show_augment_writes_a_grid(make_cfg, tmp_path):
    from matplotlib.image import imread

    from show_augment import show

    cfg = make_cfg("augment=cifar_strong", "data=digits", "num_samples=3", "num_draws=2", config_name="show_augment")
    path = show(cfg)
    assert path.name == "augment_cifar_strong_digits.png" and path.parent == tmp_path / "run"
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 150 and image.shape[1] > 150


@pytest.mark.slow
def test_show_augment_shows_clip_frames(make_cfg, tmp_path):
    from matplotlib.image import imread

    from show_augment import show

    cfg = make_cfg(
        "augment=cifar",
        "data=synthetic_video",
        f"data.root={tmp_path / 'videos'}",
        "data.train_per_class=1",
        "data.val_per_class=1",
        "data.test_per_class=1",
        "num_samples=2",
        "num_draws=2",
        "num_frames=3",
        config_name="show_augment",
    )
    image = imread(show(cfg))
    assert image.shape[0] > image.shape[1] * 0.9  # 2 samples x 3 rows of 3 frames: taller than wide
