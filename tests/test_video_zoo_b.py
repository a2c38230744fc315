"""The second half of the video model zoo: X3D, TSM, torchvision's S3D / MViT / Video Swin, timm backbones.

Parameter counts against their references, clip shapes, a training step of each, the published checkpoint
formats (key names and shapes from the authors' code) landing key for key, TSM's shift against a
hand-written reference, and a timm per-frame CNN learning the motion-order task.
"""

from __future__ import annotations

from functools import partial

import pytest
import timm
import torch
import torch.nn.functional as F
from torchvision import models as tvm
from torchvision.models import video as tvv

from models.net import Net
from models.nonlocal_block import add_non_local
from models.temporal import GRU
from models.timm_backbone import TimmBackbone
from models.tsm import TSM, temporal_shift
from models.tv_video import S3D, MViT, Swin3D
from models.x3d import X3D
from nets.build import build_net
from nets.pretrained import load_pretrained

FAST = ["x3d", "tsm", "s3d", "mvit_v2_s", "swin3d_t"]
SLOW = ["mvit_v1_b", "swin3d_s", "swin3d_b"]
BUILDERS = {
    "x3d": lambda: X3D(variant="xs"),
    "tsm": lambda: TSM(depth=50),
    "s3d": S3D,
    "mvit_v2_s": partial(MViT, arch="mvit_v2_s"),
    "mvit_v1_b": partial(MViT, arch="mvit_v1_b"),
    "swin3d_t": partial(Swin3D, arch="swin3d_t"),
    "swin3d_s": partial(Swin3D, arch="swin3d_s"),
    "swin3d_b": partial(Swin3D, arch="swin3d_b"),
}
ZOO = [*FAST, *(pytest.param(name, marks=pytest.mark.slow) for name in SLOW)]  # x3d, tsm, then torchvision's


@pytest.fixture(scope="module")
def backbone():
    """``backbone(name)``: one instance per model for this module (building the large ones takes seconds),
    freed after it."""
    cache = {}

    def get(name: str):
        if name not in cache:
            torch.manual_seed(0)
            cache[name] = BUILDERS[name]()
        return cache[name]

    yield get
    cache.clear()


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- parameter counts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ZOO[2:])
def test_torchvision_models_have_torchvisions_parameters_without_the_classifier(backbone, name):
    b = backbone(name)
    published = tvm.get_model_weights(name).KINETICS400_V1.meta["num_params"]  # torchvision's own count
    assert count(b) == published - (b.num_features * 400 + 400)


def test_tsm_has_the_resnet50_parameters_without_the_classifier(backbone):
    # The shift adds no parameters: torchvision's ResNet-50 (25,557,032) minus its 2048 x 1000 classifier.
    assert count(backbone("tsm")) == tvm.ResNet50_Weights.IMAGENET1K_V1.meta["num_params"] - (2048 * 1000 + 1000)


def test_x3d_parameters_match_the_published_count(backbone):
    # With the 400-class head: 3.79M in pytorchvideo's model zoo (X3D-XS/S/M, one network), 3.8M in
    # PySlowFast's MODEL_ZOO.md; the variants differ only in their input clip.
    with_head = count(backbone("x3d")) + 2048 * 400 + 400
    assert round(with_head / 1e6, 2) == 3.79 and round(with_head / 1e6, 1) == 3.8
    assert count(X3D(variant="m")) == count(X3D(variant="s")) == count(backbone("x3d"))


def test_x3d_flops_match_pyslowfasts_model_zoo():
    # PySlowFast reports fvcore's multiply-adds per view: X3D-XS 0.60 G at 4 x 160^2 (MODEL_ZOO.md); torch's
    # FlopCounterMode counts 2 FLOPs per multiply-add. Shapes only (meta tensors): no computation.
    from torch.utils.flop_counter import FlopCounterMode

    for variant, published in [("xs", 0.60)]:
        with torch.device("meta"):
            net = Net(backbone=X3D(variant=variant), num_classes=400).eval()
            b = net.backbone
            x = torch.empty(1, 3, b.input_frames, b.input_size, b.input_size)
        with FlopCounterMode(display=False) as counter:
            net(x)
        assert abs(counter.get_total_flops() / 2e9 - published) / published < 0.03, variant


def test_timm_backbone_has_timms_parameters_without_the_classifier():
    ref = timm.create_model("resnet18")
    assert count(TimmBackbone(name="resnet18")) == count(ref) - count(ref.fc)


# --- shapes and a training step ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ZOO)
def test_clips_of_8_16_and_32_frames_give_logits_and_stage_maps(backbone, name):
    net = Net(backbone=backbone(name), num_classes=4).eval()
    b = net.backbone
    with torch.no_grad():
        for frames in (8, 16, 32):
            assert net(torch.randn(1, 3, frames, 32, 32)).shape == (1, 4)
            assert net.embed(torch.randn(1, 3, frames, 32, 32)).shape == (1, b.num_features)
        maps = b.forward_stages(torch.randn(1, 3, 8, 64, 64))
    assert list(maps) == b.stage_names
    for stage, fmap in maps.items():
        assert fmap.ndim == 5 and fmap.shape[1] == b.stage_channels[stage], stage
        assert fmap.shape[-1] == max(64 // b.stage_strides[stage], 1), stage


@pytest.mark.parametrize("name", ZOO)
def test_one_training_step_moves_every_weight_that_gets_a_gradient(backbone, name):
    torch.manual_seed(0)
    net = Net(backbone=backbone(name), num_classes=4).train()
    frames = 8 if name == "s3d" else 4  # S3D pools time by 8 before its last stage
    x, y = torch.randn(2, 3, frames, 32, 32), torch.tensor([0, 3])
    before = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    opt.zero_grad()
    loss = F.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    graded = [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in net.parameters()]
    moved = [not torch.equal(a, p) for a, p in zip(before, net.parameters(), strict=True)]
    assert moved == graded
    # X3D's residual branches end in a BN whose scale starts at 0 (PySlowFast's ZERO_INIT_FINAL_BN): at the
    # first step only those scales, the shortcuts, the stem and the head get gradients.
    assert sum(graded) >= (0.2 if name == "x3d" else 0.9) * len(graded)


@pytest.mark.parametrize("name", FAST)
def test_every_model_config_builds_a_net_for_clips(make_cfg, name):
    cfg = make_cfg("data=synthetic_video", f"model={name}")
    assert cfg.model.backbone._target_.startswith("models.")
    if name in ("x3d", "tsm", "s3d"):  # the transformers are built (and timed) above
        with torch.no_grad():
            assert build_net(cfg.model).eval()(torch.zeros(1, 3, 8, 32, 32)).shape == (1, 4)


def test_non_local_blocks_go_into_the_stages_of_every_kind_of_backbone():
    for name, stage in [("x3d", "s4"), ("tsm", "layer3"), ("s3d", "mixed4"), ("swin3d_t", "stage3")]:
        b = BUILDERS[name]()
        add_non_local(backbone=b, stages={stage: [-1]})
        net = Net(backbone=b, num_classes=4).eval()
        with torch.no_grad():
            assert net(torch.randn(1, 3, 8, 64, 64)).shape == (1, 4), name
        assert any(k.startswith("backbone.inserted.") for k in net.state_dict()), name


def test_transformer_states_turn_into_maps_and_back(backbone):
    swin, mvit = backbone("swin3d_t"), backbone("mvit_v2_s")
    tokens = torch.randn(2, 4, 3, 5, 96)  # Swin: (B, t, h, w, C)
    assert swin.to_map(tokens).shape == (2, 96, 4, 3, 5)
    torch.testing.assert_close(swin.from_map(swin.to_map(tokens), tokens), tokens)
    state = (torch.randn(2, 1 + 4 * 3 * 5, 96), (4, 3, 5))  # MViT: class token + t*h*w positions
    fmap = mvit.to_map(state)
    assert fmap.shape == (2, 96, 4, 3, 5)
    torch.testing.assert_close(fmap[:, :, 1, 2, 3], state[0][:, 1 + (1 * 3 + 2) * 5 + 3])
    torch.testing.assert_close(mvit.from_map(fmap, state)[0], state[0])


# --- TSM --------------------------------------------------------------------------------------------------


def reference_shift(x: torch.Tensor, segments: int, shift_div: int) -> torch.Tensor:
    """Element by element: channel c of frame t takes frame t+1 (c < C/div), frame t-1 (c < 2C/div), else t."""
    nt, c = x.shape[:2]
    fold = c // shift_div
    out = torch.zeros_like(x)
    for n in range(nt):
        clip, t = divmod(n, segments)
        for ch in range(c):
            if ch < fold:
                source = t + 1
            elif ch < 2 * fold:
                source = t - 1
            else:
                source = t
            if 0 <= source < segments:
                out[n, ch] = x[clip * segments + source, ch]
    return out


@pytest.mark.parametrize("segments, channels, shift_div", [(4, 16, 8), (3, 10, 4), (5, 9, 3)])
def test_temporal_shift_matches_the_hand_written_reference(segments, channels, shift_div):
    x = torch.randn(2 * segments, channels, 2, 3)  # two clips, batch-major frames
    torch.testing.assert_close(temporal_shift(x, segments, shift_div), reference_shift(x, segments, shift_div))


def test_tsm_mixes_neighbouring_frames_only_through_the_shift():
    b = TSM(depth=18).eval()  # two blocks in layer1: a change can travel two frames
    x = torch.randn(1, 3, 8, 32, 32)
    x2 = x.clone()
    x2[:, :, 3] += 1
    with torch.no_grad():
        a, c = (b.forward_stages(v, ["layer1"])["layer1"] for v in (x, x2))
    changed = [(a[:, :, t] - c[:, :, t]).abs().max().item() > 1e-6 for t in range(8)]
    assert changed == [False, True, True, True, True, True, False, False]


def test_tsm_loads_mmaction2_checkpoints_key_for_key(tmp_path):
    # MMAction2's ResNetTSM names (mmaction/models/backbones/resnet_tsm.py and resnet.py): every conv is an
    # mmcv ConvModule (conv + bn), each block's conv1.conv is wrapped in a TemporalShift (.net).
    ref = tvm.resnet50().state_dict()  # shapes of the architecture both implement
    state = {}
    for suffix in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        state[f"backbone.conv1.bn.{suffix}"] = torch.rand_like(ref[f"bn1.{suffix}"].float())
    state["backbone.conv1.conv.weight"] = torch.randn_like(ref["conv1.weight"])
    for layer, blocks in zip(range(1, 5), (3, 4, 6, 3), strict=True):
        for i in range(blocks):
            tv, mm = f"layer{layer}.{i}", f"backbone.layer{layer}.{i}"
            for n in (1, 2, 3):
                conv = f"{mm}.conv{n}.conv.net.weight" if n == 1 else f"{mm}.conv{n}.conv.weight"
                state[conv] = torch.randn_like(ref[f"{tv}.conv{n}.weight"])
                for suffix in ("weight", "bias", "running_mean", "running_var"):
                    state[f"{mm}.conv{n}.bn.{suffix}"] = torch.rand_like(ref[f"{tv}.bn{n}.{suffix}"])
            if i == 0:
                state[f"{mm}.downsample.conv.weight"] = torch.randn_like(ref[f"{tv}.downsample.0.weight"])
                for suffix in ("weight", "bias", "running_mean", "running_var"):
                    state[f"{mm}.downsample.bn.{suffix}"] = torch.rand_like(ref[f"{tv}.downsample.1.{suffix}"])
    state["cls_head.fc_cls.weight"], state["cls_head.fc_cls.bias"] = torch.randn(400, 2048), torch.randn(400)
    path = tmp_path / "tsm_r50_kinetics400.pth"
    torch.save({"meta": {"mmaction2_version": "1.2.0"}, "state_dict": state}, path)

    net = Net(backbone=TSM(depth=50), num_classes=400)
    report = load_pretrained(net, path)
    assert report.unexpected == [] and report.skipped == []
    assert report.missing == [k for k in net.state_dict() if k.endswith("num_batches_tracked") and "layer" in k]
    assert len(report.loaded) == len(state)
    own = net.state_dict()
    torch.testing.assert_close(own["backbone.layer2.0.conv1.weight"], state["backbone.layer2.0.conv1.conv.net.weight"])
    torch.testing.assert_close(
        own["backbone.layer4.0.downsample.1.running_var"], state["backbone.layer4.0.downsample.bn.running_var"]
    )
    torch.testing.assert_close(own["head.weight"], state["cls_head.fc_cls.weight"])


# --- X3D --------------------------------------------------------------------------------------------------


def pyslowfast_x3d_state() -> dict[str, torch.Tensor]:
    """X3D-XS/S/M as PySlowFast names and shapes them (slowfast/models/video_model_builder.py X3D,
    resnet_helper.X3DTransform, stem_helper.X3DStem, head_helper.X3DHead), written out independently."""
    state = {}

    def bn(prefix, dim):
        for s in ("weight", "bias", "running_mean", "running_var"):
            state[f"{prefix}.{s}"] = torch.rand(dim)
        state[f"{prefix}.num_batches_tracked"] = torch.tensor(7)

    state["s1.pathway0_stem.conv_xy.weight"] = torch.randn(24, 3, 1, 3, 3)
    state["s1.pathway0_stem.conv.weight"] = torch.randn(24, 1, 5, 1, 1)
    bn("s1.pathway0_stem.bn", 24)
    dim_in = 24
    # (blocks, dim_out, dim_inner, SE width): depth x2.2 rounded up, width x2, bottleneck x2.25, SE 1/16 -> 8s.
    for stage, (blocks, out, inner, se) in enumerate(
        [(3, 24, 54, 8), (5, 48, 108, 8), (11, 96, 216, 16), (7, 192, 432, 32)]
    ):
        for i in range(blocks):
            p = f"s{stage + 2}.pathway0_res{i}"
            if i == 0:
                state[f"{p}.branch1.weight"] = torch.randn(out, dim_in, 1, 1, 1)
                bn(f"{p}.branch1_bn", out)
            state[f"{p}.branch2.a.weight"] = torch.randn(inner, dim_in if i == 0 else out, 1, 1, 1)
            bn(f"{p}.branch2.a_bn", inner)
            state[f"{p}.branch2.b.weight"] = torch.randn(inner, 1, 3, 3, 3)
            bn(f"{p}.branch2.b_bn", inner)
            if i % 2 == 0:
                state[f"{p}.branch2.se.fc1.weight"] = torch.randn(se, inner, 1, 1, 1)
                state[f"{p}.branch2.se.fc1.bias"] = torch.randn(se)
                state[f"{p}.branch2.se.fc2.weight"] = torch.randn(inner, se, 1, 1, 1)
                state[f"{p}.branch2.se.fc2.bias"] = torch.randn(inner)
            state[f"{p}.branch2.c.weight"] = torch.randn(out, inner, 1, 1, 1)
            bn(f"{p}.branch2.c_bn", out)
        dim_in = out
    state["head.conv_5.weight"] = torch.randn(432, 192, 1, 1, 1)
    bn("head.conv_5_bn", 432)
    state["head.lin_5.weight"] = torch.randn(2048, 432, 1, 1, 1)
    state["head.projection.weight"], state["head.projection.bias"] = torch.randn(400, 2048), torch.randn(400)
    return state


@pytest.mark.parametrize("num_classes", [400, 5])
def test_x3d_loads_pyslowfast_pyth_checkpoints_key_for_key(tmp_path, num_classes):
    state = pyslowfast_x3d_state()
    path = tmp_path / "x3d_xs.pyth"
    torch.save({"epoch": 300, "model_state": state, "optimizer_state": {}, "cfg": "MODEL:\n  ARCH: x3d\n"}, path)
    torch.manual_seed(0)
    net = Net(backbone=X3D(variant="xs"), num_classes=num_classes).eval()
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        before = net.embed(x)
    report = load_pretrained(net, path)
    assert report.unexpected == [] and report.missing == []
    if num_classes == 400:
        assert len(report.loaded) == len(state) and report.skipped == []
    else:  # a new label set: the classifier is reported, everything else lands
        assert sorted(s.split(" ")[0] for s in report.skipped) == ["head.bias", "head.weight"]
    own = net.state_dict()
    torch.testing.assert_close(
        own["backbone.s4.pathway0_res2.branch2.se.fc2.bias"], state["s4.pathway0_res2.branch2.se.fc2.bias"]
    )
    torch.testing.assert_close(own["backbone.head.lin_5.weight"], state["head.lin_5.weight"])
    with torch.no_grad():
        assert not torch.allclose(net.embed(x), before)


# --- torchvision's models: their weights and their outputs ----------------------------------------------


@pytest.mark.parametrize("name", ["swin3d_t", "mvit_v2_s"])
def test_torchvision_weights_load_and_give_torchvisions_logits(backbone, tmp_path, name):
    torch.manual_seed(1)
    ref = getattr(tvv, name)().eval()
    if name == "mvit_v2_s":  # torchvision's MViT reads the token grid from these; ours from the input
        ref.pos_encoding.temporal_size, ref.pos_encoding.spatial_size = 4, (16, 16)
    path = tmp_path / f"{name}.pth"
    torch.save(ref.state_dict(), path)
    net = Net(backbone=backbone(name), num_classes=400).eval()
    report = load_pretrained(net, path)
    assert report.missing == [] and report.unexpected == [] and report.skipped == []
    x = torch.randn(1, 3, 8, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref(x), rtol=1e-4, atol=1e-4)


def test_s3d_loads_torchvisions_weights_and_pools_as_torchvision_does(backbone, tmp_path):
    torch.manual_seed(1)
    ref = tvv.s3d().eval()
    path = tmp_path / "s3d.pth"
    torch.save(ref.state_dict(), path)
    net = Net(backbone=backbone("s3d"), num_classes=400).eval()
    report = load_pretrained(net, path)
    # The 1x1x1 conv classifier has 5-d weights: reported, not forced into the linear head.
    assert sorted(report.unexpected) == ["classifier.1.bias", "classifier.1.weight"] and report.skipped == []
    assert report.missing == ["head.weight", "head.bias"]
    fmap = torch.randn(2, 1024, 3, 9, 8)  # bigger than the (2, 7, 7) window: the averaging is not uniform
    with torch.no_grad():
        expected = ref.classifier(ref.avgpool(fmap)).mean((2, 3, 4))
        conv = ref.classifier[1]
        got = net.backbone.pool_state(fmap) @ conv.weight.flatten(1).T + conv.bias
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_s3d_refuses_clips_too_short_for_its_temporal_pooling(backbone):
    with pytest.raises(ValueError, match="at least 8 frames"):
        backbone("s3d").forward_pooled(torch.zeros(1, 3, 4, 32, 32))


def test_torchvision_weight_names_resolve_for_the_video_models(backbone):
    from nets.pretrained import torchvision_builder

    for name in ("s3d", "mvit_v2_s", "swin3d_t"):
        b = backbone(name)
        assert torchvision_builder(b, "KINETICS400_V1") == name
        assert "KINETICS400_V1" in tvm.get_model_weights(name).__members__


# --- timm -------------------------------------------------------------------------------------------------


def test_timm_backbone_loads_a_local_file_and_matches_timms_pre_logits(tmp_path):
    torch.manual_seed(0)
    ref = timm.create_model("resnet18").eval()
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    b = TimmBackbone(name="resnet18", pretrained_file=str(path)).eval()  # no network: the file wins
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(b.forward_pooled(x), ref.forward_head(ref.forward_features(x), pre_logits=True))
        assert [m.shape[1] for m in b.forward_stages(x).values()] == [64, 64, 128, 256, 512]
    add_non_local(backbone=b, stages={"layer3": [-1]})
    with torch.no_grad():
        assert b.forward_pooled(x).shape == (2, 512)


def test_timm_unknown_names_and_non_sequential_stages_fail_clearly():
    with pytest.raises(ValueError, match="is not a timm model"):
        TimmBackbone(name="no_such_model_xyz")
    b = TimmBackbone(name="test_vit")
    with pytest.raises(ValueError, match="not an nn.Sequential of blocks"):
        add_non_local(backbone=b, stages={b.stage_names[-1]: [0]})
    with torch.no_grad():
        assert Net(backbone=b, num_classes=3).eval()(torch.randn(1, 3, 160, 160)).shape == (1, 3)


def test_timm_per_frame_cnn_in_cnn_lstm_from_the_config(make_cfg):
    cfg = make_cfg(
        "data=synthetic_video",
        "model=cnn_lstm",
        "model.backbone._target_=models.timm_backbone.TimmBackbone",
        "+model.backbone.name=test_resnet",
    )
    net = build_net(cfg.model).eval()
    assert isinstance(net.backbone, TimmBackbone) and net.temporal is not None
    with torch.no_grad():
        assert net(torch.zeros(2, 3, 8, 32, 32)).shape == (2, 4)


@pytest.mark.slow
def test_timm_per_frame_cnn_learns_the_motion_order_task(tmp_path_factory):
    from data.video.synthetic import CLASSES
    from tests.test_video_learning import load_clips

    (x, y), (x_test, y_test) = load_clips(tmp_path_factory, size=32, train=40, test=12)
    torch.manual_seed(0)
    net = Net(
        backbone=TimmBackbone(name="test_resnet"), num_classes=len(CLASSES), temporal=partial(GRU, hidden_size=64)
    )
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)
    for _ in range(12):
        net.train()
        for batch in torch.randperm(len(x), generator=gen).split(16):
            start = int(torch.randint(2, (1,), generator=gen))
            loss = F.cross_entropy(net(x[batch][:, :, start::2]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(x_test[:, :, 0::2]).argmax(1) == y_test).float().mean().item()
    # Chance is 0.25 (12 of 48 clips, sd 3). A globally pooled CNN can only tell where the disc is from its
    # zero-padded borders (LeNet's fully connected layers see positions directly), so it learns the
    # order more slowly than tests/test_video_learning.py's LeNet: 0.48 after these 12 epochs.
    assert acc >= 0.42
