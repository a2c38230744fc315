"""model.pretrained: torchvision weights from the hub cache (no download), checkpoints of every kind, I3D
inflation into 3D backbones, and clear errors for bad input."""

from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torch.nn.functional as F
from torchvision import models as tvm
from torchvision.models.vgg import cfgs as vgg_cfgs
from torchvision.models.vgg import make_layers

from models.backbones import VGG, LeNet, ResNet, VideoResNet
from models.net import Net
from nets.build import build_net
from nets.pretrained import load_pretrained


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache in tmp_path; downloads fail as they would offline."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))

    def offline(url, *args, **kwargs):
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    return Path(tmp_path / "hub" / "checkpoints")


def cache(hub: Path, weights, state: dict) -> Path:
    """Writes ``state`` where torchvision would have downloaded ``weights``."""
    hub.mkdir(parents=True, exist_ok=True)
    path = hub / Path(weights.url).name
    torch.save(state, path)
    return path


def random_resnet18() -> dict:
    torch.manual_seed(123)
    net = tvm.resnet18(weights=None)
    for m in net.modules():  # non-default BN statistics, so that copying them is visible
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
    return net.state_dict()


def test_resnet_imagenet_weights_load_from_the_hub_cache_through_the_config(hub, make_cfg):
    state = random_resnet18()
    cache(hub, tvm.ResNet18_Weights.IMAGENET1K_V1, state)
    cfg = make_cfg("model=resnet", "model.backbone.small_input=false", "model.pretrained=IMAGENET1K_V1")
    net = build_net(cfg.model)
    own = net.state_dict()
    backbone_keys = [k for k in own if k.startswith("backbone.")]
    assert len(backbone_keys) == len(state) - 2  # all but torchvision's fc
    for k in backbone_keys:
        assert torch.equal(own[k], state[k.removeprefix("backbone.")]), k
    assert net.head.weight.shape == (10, 512)


def test_mismatched_shapes_are_skipped_and_reported(hub):
    state = random_resnet18()
    cache(hub, tvm.ResNet18_Weights.IMAGENET1K_V1, state)
    net = Net(backbone=ResNet(depth=18, small_input=True), num_classes=10)  # 3x3 stem instead of 7x7
    before = net.backbone.conv1.weight.clone()
    report = load_pretrained(net, "IMAGENET1K_V1")
    assert report.skipped == ["backbone.conv1.weight ((64, 3, 7, 7) -> (64, 3, 3, 3))"]
    assert set(report.unexpected) == {"fc.weight", "fc.bias"}
    assert set(report.missing) == {"head.weight", "head.bias"}
    assert torch.equal(net.backbone.conv1.weight, before)
    assert torch.equal(net.backbone.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


def test_not_cached_and_offline_fails_naming_weights_and_cache_path(hub):
    net = Net(backbone=ResNet(depth=18), num_classes=10)
    with pytest.raises(RuntimeError) as e:
        load_pretrained(net, "IMAGENET1K_V1")
    msg = str(e.value)
    assert "ResNet18_Weights.IMAGENET1K_V1" in msg
    assert str(hub / Path(tvm.ResNet18_Weights.IMAGENET1K_V1.url).name) in msg


def test_unknown_weights_name_lists_the_available_ones(hub):
    with pytest.raises(
        ValueError, match="IMAGENET1K_V9 is not a weights name of torchvision's resnet18.*IMAGENET1K_V1"
    ):
        load_pretrained(Net(backbone=ResNet(depth=18), num_classes=3), "IMAGENET1K_V9")
    with pytest.raises(ValueError, match="LeNet has no torchvision counterpart"):
        load_pretrained(Net(backbone=LeNet(), num_classes=3), "IMAGENET1K_V1")


def test_vgg_features_are_regrouped_into_stages(hub):
    torch.manual_seed(0)
    features = make_layers(vgg_cfgs["A"], batch_norm=True).eval()  # vgg11_bn's feature extractor
    cache(
        hub,
        tvm.VGG11_BN_Weights.IMAGENET1K_V1,
        {f"features.{k}": v for k, v in features.state_dict().items()},
    )
    net = Net(backbone=VGG(depth=11), num_classes=10).eval()
    report = load_pretrained(net, "IMAGENET1K_V1")
    assert report.missing == ["head.weight", "head.bias"] and not report.unexpected and not report.skipped
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net.backbone.forward_stages(x, ["stage5"])["stage5"], features(x))


def test_imagenet_weights_are_inflated_into_a_3d_resnet(hub):
    state = random_resnet18()
    cache(hub, tvm.ResNet18_Weights.IMAGENET1K_V1, state)
    net = Net(backbone=VideoResNet(arch="r3d_18"), num_classes=4).eval()
    report = load_pretrained(net, "IMAGENET1K_V1")
    assert len(report.inflated) == 20 and len(report.loaded) == len(state) - 2  # every conv; all but fc
    stem_w = net.backbone.stem[0].weight  # (64, 3, 3, 7, 7)
    assert stem_w.shape == (64, 3, 3, 7, 7)
    torch.testing.assert_close(stem_w.sum(2), state["conv1.weight"])
    assert torch.equal(stem_w[:, :, 0], stem_w[:, :, 2])
    assert torch.equal(net.backbone.layer2[0].conv1[1].running_mean, state["layer2.0.bn1.running_mean"])
    # I3D: a clip of identical frames gives the 2D response on inner frames (the outer ones see zero padding).
    frame = torch.randn(1, 3, 16, 16)
    clip = frame[:, :, None].repeat(1, 1, 5, 1, 1)  # (B, C, T, H, W)
    with torch.no_grad():
        out3d = net.backbone.stem[0](clip)  # (1, 64, 5, 8, 8)
        out2d = F.conv2d(frame, state["conv1.weight"], stride=2, padding=3)
    torch.testing.assert_close(out3d[:, :, 2], out2d, atol=1e-5, rtol=1e-5)


def test_imagenet_weights_into_r2plus1d_fail_clearly(hub):
    cache(hub, tvm.ResNet18_Weights.IMAGENET1K_V1, random_resnet18())
    with pytest.raises(ValueError, match=r"cannot inflate 2D weights.*backbone\.stem\.0\.weight is \(45, 3, 1, 7, 7\)"):
        load_pretrained(Net(backbone=VideoResNet(arch="r2plus1d_18"), num_classes=4), "IMAGENET1K_V1")


def lenet_net(num_classes: int, seed: int) -> Net:
    torch.manual_seed(seed)
    return Net(backbone=LeNet(), num_classes=num_classes)


@pytest.mark.parametrize("wrap", ["ours", "ddp_lightning", "compiled_raw", "raw_backbone", "model_key"])
def test_checkpoint_into_another_num_classes_keeps_backbone_and_reinitialises_head(tmp_path, wrap):
    source = lenet_net(10, seed=1)
    sd = source.state_dict()
    saved = {
        "ours": {"state_dict": {f"net.{k}": v for k, v in sd.items()}, "hyper_parameters": {"config": {}}},
        "ddp_lightning": {"state_dict": {f"module.model.{k}": v for k, v in sd.items()}, "epoch": 3},
        "compiled_raw": {f"_orig_mod.{k}": v for k, v in sd.items()},
        "raw_backbone": source.backbone.state_dict(),
        "model_key": {"model": sd, "optimizer": {}},
    }[wrap]
    path = tmp_path / "pre.ckpt"
    torch.save(saved, path)
    net = lenet_net(5, seed=2)
    fresh_head = net.head.weight.clone()
    report = load_pretrained(net, str(path))
    for k, v in source.backbone.state_dict().items():
        assert torch.equal(net.backbone.state_dict()[k], v), k
    assert net.head.weight.shape == (5, 84) and torch.equal(net.head.weight, fresh_head)
    if wrap != "raw_backbone":
        assert "head.weight ((10, 84) -> (5, 84))" in report.skipped
    assert report.missing == (["head.weight", "head.bias"] if wrap == "raw_backbone" else [])


def test_excluded_prefixes_are_not_loaded(tmp_path):
    source = lenet_net(5, seed=1)
    torch.save(source.state_dict(), tmp_path / "pre.pt")
    net = lenet_net(5, seed=2)
    fresh_head = net.head.weight.clone()
    report = load_pretrained(net, str(tmp_path / "pre.pt"), exclude=["head"])
    assert report.excluded == ["head.weight", "head.bias"]
    assert torch.equal(net.head.weight, fresh_head)
    assert torch.equal(net.backbone.conv1[0].weight, source.backbone.conv1[0].weight)


def test_bad_checkpoints_fail_naming_the_file(tmp_path):
    net = lenet_net(5, seed=0)
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(FileNotFoundError, match=f"model.pretrained={missing}: no such file"):
        load_pretrained(net, str(missing))
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(ValueError, match=f"model.pretrained={text} is not a checkpoint"):
        load_pretrained(net, str(text))
    other = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(ValueError, match=f"model.pretrained={other} shares no keys with the model"):
        load_pretrained(net, str(other))
    empty = tmp_path / "empty.pt"
    torch.save({"epoch": 3}, empty)
    with pytest.raises(ValueError, match=f"model.pretrained={empty} holds no state_dict"):
        load_pretrained(net, str(empty))
