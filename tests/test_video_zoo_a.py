"""Video zoo, first half: C3D, I3D, I3D ResNet-50 and SlowFast, and the loaders of their authors' checkpoints.

The loaders are tested on files in the real containers (a raw state dict, ``{"model_state": ...}``,
``{"meta", "state_dict"}``) whose key names and shapes come from the authors' code:
tests/published_keys/*.json were written by instantiating piergiaj/pytorch-i3d's ``InceptionI3d(400)``,
DavideA/c3d-pytorch's ``C3D()``, PySlowFast's ``SlowFast`` / ``ResNet`` from its Kinetics configs and
MMAction2's ``ResNet3d`` (i3d_r50 config, mmcv-lite 2.2.0) and ``ResNet3dSlowFast`` + ``SlowFastHead``
(mmaction2 1.2.0, mmengine 0.10.7; its 4x16 and 8x8-steplr configs) and dumping ``{key: shape}`` of their state
dicts (each file names its source). With those models' weights copied in, the nets here gave the same outputs
(max abs difference 0 for I3D and C3D, <1e-5 for SlowFast 4x16, PySlowFast I3D, MMAction2 I3D and I3D-NL;
MMAction2 SlowFast 4x16 and 8x8-steplr through weights/mmaction_slowfast.py: logits of up to 5 within 1.1e-6).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.errors import InstantiationException

from features.extract import Embedder
from models.net import Net
from models.slowfast import SlowFast
from nets import formats
from nets.build import build_net
from nets.pretrained import load_pretrained

KEYS = Path(__file__).parent / "published_keys"


def net_of(make_cfg, model: str, *overrides: str, num_classes: int = 4) -> Net:
    cfg = make_cfg("data=synthetic_video", f"model={model}", f"data.num_classes={num_classes}", *overrides)
    return build_net(cfg.model)


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# --- architecture ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model, num_classes, expected",
    [
        # DavideA/c3d-pytorch C3D() (Sports-1M, fc8 487 classes): 79,991,015 (78.0M without fc8).
        ("c3d", 487, 79_991_015),
        # piergiaj/pytorch-i3d InceptionI3d(num_classes=400): 12,697,264 (12.3M without the logits).
        ("i3d", 400, 12_697_264),
        # MMAction2 i3d_r50 (ResNet3d + I3DHead 400) and PySlowFast I3D_8x8_R50 alike; both zoos list 28.0M.
        ("i3d_r50", 400, 28_043_472),
        # PySlowFast SLOWFAST_4x16_R50 with its 400-class head; MMAction2's zoo lists 34.5M.
        ("slowfast", 400, 34_480_216),
    ],
)
def test_parameter_counts_equal_the_reference_implementations(make_cfg, model, num_classes, expected):
    assert n_params(net_of(make_cfg, model, num_classes=num_classes)) == expected


# Stage maps of a (1, 3, T, 32, 32) clip: (channels, frames) of each stage, for T = 8, 16, 32.
STAGES = {
    "c3d": {
        "conv1": (64, [8, 16, 32]),
        "conv3": (256, [2, 4, 8]),
        "conv5": (512, [1, 1, 2]),
        "fc6": (4096, [1, 1, 1]),
        "fc7": (4096, [1, 1, 1]),
    },
    "i3d": {"Conv3d_2c_3x3": (192, [4, 8, 16]), "Mixed_4f": (832, [2, 4, 8]), "Mixed_5c": (1024, [1, 2, 4])},
    "i3d_r50": {"layer1": (256, [1, 2, 4]), "layer4": (2048, [1, 2, 4])},
    "slowfast": {"s1": (64 + 8, [1, 2, 4]), "s3": (512 + 64, [1, 2, 4]), "s5": (2048 + 256, [1, 2, 4])},
}


@pytest.mark.parametrize("model", list(STAGES))
def test_stage_maps_and_logits_for_8_16_and_32_frame_clips(make_cfg, model):
    net = net_of(make_cfg, model).eval()
    backbone = net.backbone
    for i, t in enumerate((8, 16, 32)):
        x = torch.randn(1, 3, t, 32, 32)
        with torch.no_grad():
            maps = backbone.forward_stages(x, list(STAGES[model]))
            assert net(x).shape == (1, 4)
        for stage, (channels, frames) in STAGES[model].items():
            fmap = maps[stage]
            assert fmap.shape[:3] == (1, channels, frames[i]), (stage, t)
            assert backbone.stage_channels[stage] == channels
            cells = 1 if stage.startswith("fc") else max(32 // backbone.stage_strides[stage], 1)
            assert fmap.shape[3] in (cells, cells + 1), (stage, fmap.shape)  # C3D's padded pool5: 2 cells
    assert net.embed(torch.randn(2, 3, 8, 32, 32)).shape == (2, backbone.num_features)


def test_c3d_fc6_and_fc7_are_extractable_by_name(make_cfg):
    net = net_of(make_cfg, "c3d").eval()
    clip = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        fc7 = net.backbone.forward_stages(clip, ["fc7"])["fc7"]
        fc6 = Embedder(net, layers=["fc6"], pools={"fc6": "avg"})(clip)["fc6"]
        assert fc6.shape == (2, 4096) and (fc6 >= 0).all()  # after the ReLU, as the Caffe features
        assert fc7.shape == (2, 4096, 1, 1, 1)
        torch.testing.assert_close(net.embed(clip), fc7.flatten(1))  # the embedding is fc7; fc8 is the head


@pytest.mark.slow
def test_c3d_takes_the_published_16x112x112_clip(make_cfg):
    net = net_of(make_cfg, "c3d").eval()
    with torch.no_grad():
        maps = net.backbone.forward_stages(torch.randn(1, 3, 16, 112, 112), ["conv5", "fc7"])
    assert maps["conv5"].shape == (1, 512, 1, 4, 4)  # the 8192 inputs of fc6, as in Sports-1M
    assert maps["fc7"].shape == (1, 4096, 1, 1, 1)


def test_slowfast_pathways_sample_the_clip_and_fuse_fast_into_slow():
    torch.manual_seed(0)
    net = SlowFast(alpha=4, fusion_kernel=7).eval()  # the 8x8 variant
    x = torch.randn(2, 3, 32, 32, 32)
    with torch.no_grad():
        paths = net.forward_pathways(x)
        maps = net.forward_stages(x, ["s5"])
        pooled = net.forward_pooled(x)
    for stage, (slow_c, fast_c) in net.pathway_channels.items():
        slow, fast = paths[stage]
        assert slow.shape[:3] == (2, slow_c, 8) and fast.shape[:3] == (2, fast_c, 32)  # T/alpha and T frames
        assert slow.shape[3:] == fast.shape[3:]
    assert net.pathway_channels["s5"] == (2048, 256)
    assert net.s1_fuse.conv_f2s.kernel_size == (7, 1, 1) and net.s1_fuse.conv_f2s.stride == (4, 1, 1)
    # The stage map is both pathways, Fast averaged to Slow's time steps; its pool is PySlowFast's head input.
    slow, fast = paths["s5"]
    assert maps["s5"].shape == (2, 2304, 8, 1, 1)
    torch.testing.assert_close(pooled, torch.cat([slow.flatten(2).mean(-1), fast.flatten(2).mean(-1)], 1))
    # The Slow pathway sees frames 0, alpha, 2*alpha, ...: its stem on those frames alone.
    with torch.no_grad():
        stem = net.s1.pathway0_stem(x[:, :, ::4])
    torch.testing.assert_close(paths["s1"][0], stem)


def test_slowfast_without_fusion_norm_concatenates_the_bare_lateral_conv():
    # MMAction2's laterals (lateral_norm=False): a conv alone, so no BN parameters; its R50 4x16 with a 400-class
    # head has 34,479,288 parameters (ResNet3dSlowFast + SlowFastHead), PySlowFast's 928 more (the laterals' BNs).
    net = SlowFast(fusion_norm=False).eval()
    assert n_params(Net(backbone=net, num_classes=400)) == 34_479_288
    assert net.s1_fuse.bn is None and not any("_fuse.bn" in k for k in net.state_dict())
    slow, fast = torch.randn(1, 64, 2, 4, 4), torch.randn(1, 8, 16, 4, 4) - 1  # mostly negative: a ReLU would show
    with torch.no_grad():
        fused, same = net.s1_fuse([slow, fast])
        expected = F.conv3d(fast, net.s1_fuse.conv_f2s.weight, stride=(8, 1, 1), padding=(2, 0, 0))
    assert same is fast and torch.equal(fused[:, :64], slow)
    torch.testing.assert_close(fused[:, 64:], expected)
    assert (expected < 0).any()


def test_slowfast_lateral_fusion_carries_fast_into_slow():
    net = SlowFast().eval()
    x = torch.randn(1, 3, 16, 32, 32)
    y = x.clone()
    y[:, :, 1::8] = 0  # frames only the Fast pathway sees
    with torch.no_grad():
        a, b = net.forward_pathways(x, ["s2"])["s2"], net.forward_pathways(y, ["s2"])["s2"]
    assert torch.equal(net.forward_pathways(x, ["s1"])["s1"][0], net.forward_pathways(y, ["s1"])["s1"][0])
    assert not torch.allclose(a[0], b[0])  # the Slow pathway changes through s1_fuse


@pytest.mark.parametrize(
    "model, overrides, inserted",
    [
        ("i3d_r50", ["model/nonlocal=res4"], ["layer3_4"]),
        ("i3d_r50", ["model/nonlocal=res34", "model.non_local.stages={layer2:[1,3],layer3:[1,3,5]}"], 5),
        (
            "i3d",
            ["model/nonlocal=res4", "~model.non_local.stages.layer3", "+model.non_local.stages.Mixed_4f=[-1]"],
            ["Mixed_4f_5"],  # after Mixed_4f itself (block 0 of the stage is its max-pool)
        ),
    ],
)
def test_non_local_blocks_go_into_the_video_backbones(make_cfg, model, overrides, inserted):
    net = net_of(make_cfg, model, *overrides).eval()
    keys = list(net.backbone.inserted)
    assert keys == inserted if isinstance(inserted, list) else len(keys) == inserted
    with torch.no_grad():
        assert net(torch.randn(1, 3, 8, 32, 32)).shape == (1, 4)


def test_i3d_takes_non_local_blocks_only_where_the_stage_width_holds(make_cfg):
    with pytest.raises(InstantiationException, match=r"only after a stage's last block.*Mixed_4f: \[-1\], not block 4"):
        net_of(
            make_cfg,
            "i3d",
            "model/nonlocal=res4",
            "~model.non_local.stages.layer3",
            "+model.non_local.stages.Mixed_4f=[-2]",
        )


def test_slowfast_refuses_non_local_blocks_with_the_reason(make_cfg):
    with pytest.raises(InstantiationException, match="non-local blocks are not supported in SlowFast"):
        net_of(
            make_cfg,
            "slowfast",
            "model/nonlocal=res4",
            "~model.non_local.stages.layer3",
            "+model.non_local.stages.s4=[-2]",
        )


@pytest.mark.parametrize("model, stage", [("slowfast", None), ("i3d_r50", "layer3"), ("c3d", "conv5")])
def test_roi_heads_pool_the_video_stage_maps(make_cfg, model, stage):
    overrides = ["model/roi=align"] + ([f"model.roi.stage={stage}"] if stage else [])
    net = net_of(make_cfg, model, *overrides).eval()
    boxes = [torch.tensor([[0.0, 0.0, 16.0, 16.0], [8.0, 8.0, 32.0, 32.0]]), torch.tensor([[0.0, 0.0, 32.0, 32.0]])]
    with torch.no_grad():
        assert net(torch.randn(2, 3, 8, 32, 32), boxes).shape == (2, 4)
        assert net.forward_boxes(torch.randn(2, 3, 8, 32, 32), boxes).shape == (3, 4)


@pytest.fixture(scope="module")
def synthetic_batch(tmp_path_factory):
    """One training batch of the synthetic motion-order videos: (4, 3, 8, 32, 32) clips and their labels."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from runs.compose import compose_config

    root = tmp_path_factory.mktemp("zoo")
    tiny = ["data.train_per_class=1", "data.val_per_class=1", "data.test_per_class=1", "data.batch_size=4"]
    cfg = compose_config("data=synthetic_video", f"paths.data_dir={root}", *tiny, output_dir=root / "run")
    GlobalHydra.instance().clear()
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


@pytest.mark.parametrize("model", ["c3d", "i3d", "i3d_r50", "slowfast"])
def test_a_training_step_reaches_every_parameter(make_cfg, synthetic_batch, model):
    torch.manual_seed(0)
    net = net_of(make_cfg, model).train()
    x, y = synthetic_batch["input"], synthetic_batch["target"]
    assert x.shape == (4, 3, 8, 32, 32)
    before = {k: v.detach().clone() for k, v in net.named_parameters()}
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    loss = F.cross_entropy(net(x), y)
    loss.backward()
    no_grad = [k for k, p in net.named_parameters() if p.grad is None or not p.grad.isfinite().all()]
    assert torch.isfinite(loss) and no_grad == []
    opt.step()
    assert all(not torch.equal(p, before[k]) for k, p in net.named_parameters() if p.grad.abs().sum() > 0)
    assert not torch.equal(net.head.weight, before["head.weight"])


# --- published checkpoints ---------------------------------------------------------------------------------


def published_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under a published file's key names and shapes (BN variances positive)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in json.loads((KEYS / name).read_text())["keys"].items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * 0.05
    return state


# name, how the authors save it, model, extra overrides, num_classes of the file, checkpoint key -> net key
PUBLISHED = {
    "pytorch-i3d": (
        "pytorch_i3d_rgb_imagenet.json",
        lambda s: s,
        "i3d",
        [],
        400,
        ("Mixed_4f.b1b.conv3d.weight", "backbone.Mixed_4f.b1b.conv3d.weight"),
    ),
    "c3d.pickle": ("c3d_pickle.json", lambda s: s, "c3d", [], 487, ("fc6.weight", "backbone.fc6.weight")),
    "pyslowfast-slowfast": (
        "pyslowfast_SLOWFAST_4x16_R50.json",
        lambda s: {"epoch": 196, "model_state": s, "optimizer_state": {}, "cfg": "MODEL:\n  ARCH: slowfast\n"},
        "slowfast",
        [],
        400,
        ("s3_fuse.conv_f2s.weight", "backbone.s3_fuse.conv_f2s.weight"),
    ),
    "pyslowfast-i3d-nln": (
        "pyslowfast_I3D_NLN_8x8_R50.json",
        lambda s: {"epoch": 196, "model_state": s, "cfg": ""},
        "i3d_r50",
        [
            "model.backbone.conv1_stride_t=1",
            "model.backbone.pool1_stride_t=1",
            "model/nonlocal=res34",
            "model.non_local.stages={layer2:[1,3],layer3:[1,3,5]}",
            "model.non_local.scale=true",
        ],
        400,
        ("s4.pathway0_nonlocal3.conv_theta.weight", "backbone.inserted.layer3_3.theta.weight"),
    ),
    "mmaction-i3d": (
        "mmaction_i3d_r50.json",
        lambda s: {"meta": {"mmaction2_version": "1.2.0", "epoch": 100}, "state_dict": s},
        "i3d_r50",
        [],
        400,
        ("backbone.layer3.5.conv1.bn.running_var", "backbone.layer3.5.conv1.bn.running_var"),
    ),
    "mmaction-slowfast": (
        "mmaction_slowfast_r50_4x16.json",
        lambda s: {"meta": {"mmaction2_version": "1.2.0", "epoch": 256}, "state_dict": s},
        "slowfast",
        ["model.backbone.fusion_norm=false"],
        400,
        ("backbone.slow_path.layer2_lateral.conv.weight", "backbone.s3_fuse.conv_f2s.weight"),
    ),
    "mmaction-slowfast-8x8-steplr": (
        "mmaction_slowfast_r50_8x8_steplr.json",
        lambda s: {"meta": {}, "state_dict": s},
        "slowfast",
        ["model.backbone.alpha=4", "model.backbone.fusion_kernel=7"],
        400,
        ("backbone.slow_path.layer1_lateral.bn.running_var", "backbone.s2_fuse.bn.running_var"),
    ),
    "mmaction-i3d-nl": (
        "mmaction_i3d_r50_nl_embedded_gaussian.json",
        lambda s: {"meta": {}, "state_dict": s},
        "i3d_r50",
        ["model/nonlocal=res34", "model.non_local.stages={layer2:[1,3],layer3:[1,3,5]}"],
        400,
        ("backbone.layer2.3.non_local_block.phi.0.conv.weight", "backbone.inserted.layer2_3.phi.weight"),
    ),
}


HEADS = ("logits.conv3d.weight", "fc8.weight", "head.projection.weight", "cls_head.fc_cls.weight")
# Tensors a format reshapes: pytorch-i3d's logits conv, mmcv's non-local conv_out biases (zeros, 5 blocks),
# MMAction2's SlowFastHead weight (columns Fast first -> Slow first).
RESHAPED = {"pytorch-i3d": 1, "mmaction-i3d-nl": 5, "mmaction-slowfast": 1, "mmaction-slowfast-8x8-steplr": 1}


def as_head(name: str, weight: torch.Tensor) -> torch.Tensor:
    """A published classifier weight as the Net's head holds it."""
    if name.startswith("mmaction-slowfast"):
        return torch.cat([weight[:, 256:], weight[:, :256]], 1)  # SlowFastHead: [fast 256 | slow 2048]
    return weight.flatten(1)  # 1x1x1 conv classifiers -> linear


# Files of 100-320 MB at full size: their key names and shapes are checked fast above, the full load is slow.
BIG = ("c3d.pickle", "pyslowfast-i3d-nln", "mmaction-i3d", "mmaction-i3d-nl")


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_every_key_and_shape_of_a_published_checkpoint_maps_onto_the_net(make_cfg, name):
    keys, _, model, overrides, classes, (src, dst) = PUBLISHED[name]
    shapes = json.loads((KEYS / keys).read_text())["keys"]
    state = {k: torch.empty(shape, device="meta") for k, shape in shapes.items()}  # names and shapes only
    net = net_of(make_cfg, model, *overrides, num_classes=classes)
    converted, reshaped, fmt = formats.convert(state, net, None)
    own = net.state_dict()
    assert fmt == name.split("-")[0].split(".")[0].replace("pytorch", "i3d")
    assert sorted(converted) == sorted(own)  # every key lands, every tensor of the net is covered
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in own.items()}
    assert dst in converted and len(reshaped) == RESHAPED.get(name, 0)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in PUBLISHED])
def test_every_key_of_a_published_checkpoint_lands(make_cfg, tmp_path, name):
    keys, container, model, overrides, classes, (src, dst) = PUBLISHED[name]
    state = published_state(keys)
    path = tmp_path / "weights.pth"
    torch.save(container(state), path)
    net = net_of(make_cfg, model, *overrides, num_classes=classes).eval()
    x = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        before = net(x)
    report = load_pretrained(net, path)
    assert report.unexpected == [] and report.skipped == [] and report.missing == []
    # Every checkpoint tensor landed and every tensor of the net came from it.
    own = net.state_dict()
    assert sorted(report.loaded) == sorted(own)
    assert torch.equal(own[dst], state[src])
    head = next(k for k in state if k.endswith(HEADS))
    assert torch.equal(own["head.weight"], as_head(name, state[head]))
    with torch.no_grad():
        after = net(x)
    assert not torch.allclose(before, after)


def test_pytorch_i3d_logits_become_the_head_and_are_reported_reshaped(make_cfg, tmp_path):
    state = published_state("pytorch_i3d_rgb_imagenet.json")
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}  # saved by PyTorch 0.3
    torch.save(state, tmp_path / "rgb_imagenet.pt")
    net = net_of(make_cfg, "i3d", num_classes=400).eval()
    report = load_pretrained(net, tmp_path / "rgb_imagenet.pt")
    assert report.source.endswith("(i3d)")
    assert report.reshaped == ["logits.conv3d.weight (400, 1024, 1, 1, 1) -> head.weight (400, 1024)"]
    assert "reshaped (1)" in report.summary()
    assert all(k.endswith("num_batches_tracked") for k in report.missing) and report.missing
    # The head is pytorch-i3d's logits conv on the pooled Mixed_5c map.
    x = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        pooled = net.backbone.forward_pooled(x)
        expected = F.conv3d(pooled[:, :, None, None, None], state["logits.conv3d.weight"], state["logits.conv3d.bias"])
        torch.testing.assert_close(net(x), expected.flatten(1))


def test_a_head_of_another_size_is_skipped_and_reported(make_cfg, tmp_path):
    torch.save(published_state("pytorch_i3d_rgb_imagenet.json"), tmp_path / "rgb_imagenet.pt")
    net = net_of(make_cfg, "i3d", num_classes=101)
    report = load_pretrained(net, tmp_path / "rgb_imagenet.pt")
    assert report.skipped == ["head.weight ((400, 1024) -> (101, 1024))", "head.bias ((400,) -> (101,))"]
    assert report.missing == [] and report.unexpected == [] and len(report.loaded) == len(net.state_dict()) - 2


def tiny(name: str) -> dict[str, torch.Tensor]:
    """A published file's key names with one-element tensors: enough to tell its format and fail on shapes."""
    return {k: torch.zeros(1) for k in json.loads((KEYS / name).read_text())["keys"]}


def test_the_format_can_be_named_and_a_wrong_one_fails_clearly(make_cfg, tmp_path):
    state = tiny("pyslowfast_SLOWFAST_4x16_R50.json")
    net = net_of(make_cfg, "slowfast")
    converted, _, fmt = formats.convert(state, net, "pyslowfast")
    assert fmt == "pyslowfast" and sorted(converted) == sorted(net.state_dict())
    assert formats.convert(state, net, "native")[0] is state  # keys left as they are
    torch.save({"model_state": state}, tmp_path / "sf.pyth")
    with pytest.raises(ValueError, match="pretrained_format='caffe2' is unknown; choose one of"):
        load_pretrained(net, tmp_path / "sf.pyth", format="caffe2")
    wrong = "pytorch-i3d checkpoint is for InceptionI3d backbones; this net's backbone is SlowFast"
    with pytest.raises(ValueError, match=wrong):
        load_pretrained(net, tmp_path / "sf.pyth", format="i3d")
    wrong = "PySlowFast SlowFast checkpoint is for SlowFast backbones; this net's backbone is I3DResNet"
    with pytest.raises(ValueError, match=wrong):
        load_pretrained(net_of(make_cfg, "i3d_r50"), tmp_path / "sf.pyth")


def test_model_pretrained_format_reaches_the_loader(make_cfg, tmp_path):
    torch.save(tiny("c3d_pickle.json"), tmp_path / "c3d.pickle")
    cfg = make_cfg("data=synthetic_video", "model=i3d", f"model.pretrained={tmp_path / 'c3d.pickle'}")
    with pytest.raises(ValueError, match=r"C3D \(c3d.pickle\) checkpoint is for C3D backbones"):
        build_net(cfg.model)  # told by its keys
    cfg.model.pretrained_format = "mmaction"
    with pytest.raises(ValueError, match="MMAction2 checkpoint is for I3DResNet backbones"):
        build_net(cfg.model)


# --- MMAction2 SlowFast ------------------------------------------------------------------------------------


def mmaction2_slowfast_logits(state: dict[str, torch.Tensor], x: torch.Tensor, *, alpha: int) -> torch.Tensor:
    """MMAction2's ``ResNet3dSlowFast.forward`` + ``SlowFastHead`` (eval), written on its own keys: mmcv
    ConvModules (conv, [bn, relu]), pytorch-style bottlenecks (stride on the 3x3), laterals after the stem and
    layer1..3, the pathways pooled and concatenated Fast first."""

    def conv_module(prefix: str, x: torch.Tensor, stride=1, relu: bool = True) -> torch.Tensor:
        w = state[f"{prefix}.conv.weight"]
        x = F.conv3d(x, w, stride=stride, padding=tuple(k // 2 for k in w.shape[2:]))
        if f"{prefix}.bn.weight" not in state:
            return x  # a lateral of lateral_norm=False: no norm, no activation
        bn = [state[f"{prefix}.bn.{n}"] for n in ("running_mean", "running_var", "weight", "bias")]
        x = F.batch_norm(x, *bn, training=False, eps=1e-5)
        return F.relu(x) if relu else x

    def stem(path: str, x: torch.Tensor) -> torch.Tensor:
        x = conv_module(f"backbone.{path}.conv1", x, stride=(1, 2, 2))
        return F.max_pool3d(x, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))

    def layer(path: str, index: int, x: torch.Tensor) -> torch.Tensor:
        for i in range(1 + max(int(k.split(".")[3]) for k in state if k.startswith(f"backbone.{path}.layer{index}."))):
            block, s = f"backbone.{path}.layer{index}.{i}", (1, 2, 2) if index > 1 and i == 0 else 1
            out = conv_module(f"{block}.conv2", conv_module(f"{block}.conv1", x), stride=s)
            out = conv_module(f"{block}.conv3", out, relu=False)
            shortcut = conv_module(f"{block}.downsample", x, stride=s, relu=False) if i == 0 else x
            x = F.relu(out + shortcut)
        return x

    slow = stem("slow_path", F.interpolate(x, scale_factor=(1 / alpha, 1, 1), mode="nearest"))
    fast = stem("fast_path", x)
    slow = torch.cat([slow, conv_module("backbone.slow_path.conv1_lateral", fast, stride=(alpha, 1, 1))], 1)
    for index in range(1, 5):
        slow, fast = layer("slow_path", index, slow), layer("fast_path", index, fast)
        if index < 4:
            lateral = conv_module(f"backbone.slow_path.layer{index}_lateral", fast, stride=(alpha, 1, 1))
            slow = torch.cat([slow, lateral], 1)
    pooled = torch.cat([fast.mean((2, 3, 4)), slow.mean((2, 3, 4))], 1)  # (B, 256 + 2048): Fast first
    return F.linear(pooled, state["cls_head.fc_cls.weight"], state["cls_head.fc_cls.bias"])


def lively(state: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """``state`` with convs at 1/sqrt(fan-in) and BN scales near 1, so the input (which frames, which
    pathway) still shows in the logits after 50 layers; published_state's small weights wash it out."""
    g = torch.Generator().manual_seed(seed)
    out = dict(state)
    for key, value in state.items():
        if value.ndim == 5:
            out[key] = torch.randn(value.shape, generator=g) * value[0].numel() ** -0.5
        elif key.endswith("bn.weight"):
            out[key] = 1 + 0.1 * torch.randn(value.shape, generator=g)
    return out


@pytest.mark.parametrize(
    "keys, alpha, overrides",
    [
        ("mmaction_slowfast_r50_4x16.json", 8, ["model.backbone.fusion_norm=false"]),
        ("mmaction_slowfast_r50_8x8_steplr.json", 4, ["model.backbone.alpha=4", "model.backbone.fusion_kernel=7"]),
    ],
)
def test_mmaction2_slowfast_loads_and_gives_mmaction2s_logits(make_cfg, tmp_path, keys, alpha, overrides):
    state = lively(published_state(keys))
    torch.save({"meta": {"mmaction2_version": "1.2.0"}, "state_dict": state}, tmp_path / "slowfast.pth")
    net = net_of(make_cfg, "slowfast", *overrides, num_classes=400).eval()
    report = load_pretrained(net, tmp_path / "slowfast.pth")
    assert report.source.endswith("(mmaction)") and len(report.loaded) == len(state) == len(net.state_dict())
    assert report.reshaped == [
        "cls_head.fc_cls.weight (400, 2304) -> head.weight (400, 2304): columns [fast 256 | slow 2048] -> "
        "[slow | fast] (MMAction2's SlowFastHead concatenates Fast first)"
    ]
    own = net.state_dict()
    for ours, theirs in [
        ("s1.pathway1_stem.bn.running_var", "fast_path.conv1.bn.running_var"),
        ("s4.pathway0_res0.branch1_bn.bias", "slow_path.layer3.0.downsample.bn.bias"),
        ("s5.pathway1_res2.branch2.c.weight", "fast_path.layer4.2.conv3.conv.weight"),
        ("s3.pathway0_res1.branch2.b_bn.weight", "slow_path.layer2.1.conv2.bn.weight"),
        ("s1_fuse.conv_f2s.weight", "slow_path.conv1_lateral.conv.weight"),
    ]:
        assert torch.equal(own[f"backbone.{ours}"], state[f"backbone.{theirs}"])
    torch.manual_seed(0)
    x = torch.randn(2, 3, 2 * alpha, 32, 32)
    with torch.no_grad():
        expected = mmaction2_slowfast_logits(state, x, alpha=alpha)
        torch.testing.assert_close(net(x), expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())
        # The clip shows in the logits (it would not through published_state's weights), so the comparison above
        # sees which frames the Slow pathway takes and what the laterals add.
        other = mmaction2_slowfast_logits(state, torch.randn_like(x), alpha=alpha)
    assert (other - expected).abs().max() > 0.05 * expected.abs().max()


def test_mmaction2_slowfast_settings_the_file_needs_fail_clearly(make_cfg):
    def meta_state(keys: str) -> dict[str, torch.Tensor]:
        return {k: torch.empty(v, device="meta") for k, v in json.loads((KEYS / keys).read_text())["keys"].items()}

    state, steplr = meta_state("mmaction_slowfast_r50_4x16.json"), meta_state("mmaction_slowfast_r50_8x8_steplr.json")
    with torch.device("meta"):  # names and shapes only: no weight initialisation
        pyslowfast_like = net_of(make_cfg, "slowfast")  # laterals with BN + ReLU, fusion_kernel 5
        bare = net_of(make_cfg, "slowfast", "model.backbone.fusion_norm=false")
        i3d = net_of(make_cfg, "i3d")
    with pytest.raises(ValueError, match="lateral convs has no BN or ReLU .* set model.backbone.fusion_norm=false"):
        formats.convert(state, pyslowfast_like, None)
    with pytest.raises(ValueError, match="lateral convs has a BN .* set model.backbone.fusion_norm=true"):
        formats.convert(steplr, bare, None)
    with pytest.raises(ValueError, match="temporal kernel of 7, the net's 5: set model.backbone.fusion_kernel=7"):
        formats.convert(steplr, pyslowfast_like, None)
    deeper = {k.replace("layer3.5.", f"layer3.{i}."): v for i in range(5, 23) for k, v in state.items()}
    with pytest.raises(ValueError, match="pathways of different depths .* 23 Slow blocks, 6 Fast"):
        formats.convert({**state, **{k: v for k, v in deeper.items() if "slow_path" in k}}, bare, None)
    with pytest.raises(ValueError, match="is a ResNet-101 .* set model.backbone.depth=101"):
        formats.convert({**state, **deeper}, bare, None)
    with pytest.raises(ValueError, match="MMAction2 SlowFast checkpoint is for SlowFast backbones; .* is InceptionI3d"):
        formats.convert(state, i3d, "mmaction")
    assert sorted(formats.convert(state, bare, None)[0]) == sorted(bare.state_dict())
