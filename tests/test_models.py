"""Tests of tinyvgg.models: Table 1 and 2, names, width, dense evaluation, state dicts,
initialisation, init_from and whole-network gradient checks.

Small models (width 1/16: channels 4-8-16-32-32) keep everything fast; one
full-size VGG-11 is built once (module fixture) to tie count_params to real arrays.
"""

import math

import numpy as np
import pytest

from tinyvgg import backend
from tinyvgg.gradcheck import check_gradients
from tinyvgg.layers import BatchNorm2d, Conv2d, Dropout, Linear, LocalResponseNorm, MaxPool2d, ReLU
from tinyvgg.models import (CONFIGS, VGG, StateDictError, count_params, init_from, initialize,
                            resolve_name, vgg)

SMALL = dict(width=1 / 16, input_size=32, hidden=32, num_classes=10)

# Table 2 of the paper, exact counts at input 224 and 1000 classes.
TABLE2 = {"A": 132_863_336, "A-LRN": 132_863_336, "B": 133_047_848, "C": 133_638_952,
          "D": 138_357_544, "E": 143_667_240}
CONV_COUNT = {"A": 8, "A-LRN": 8, "B": 10, "C": 13, "D": 13, "E": 16, "B-5x5": 5}
# BatchNorm adds gamma and beta per conv output channel.
BN_EXTRA = {k: 2 * sum(max(1, int(e.split("-")[1])) for b in CONFIGS[k] for e in b
                       if e.startswith("conv")) for k in CONFIGS}


def convs(model):
    return [(n, l) for n, l in model.named_layers() if isinstance(l, Conv2d)]


@pytest.fixture(scope="module")
def full_a():
    backend.seed(0)
    m = vgg("vgg11", init="paper")  # the layer constructors' draw is the paper's: no second one
    yield m
    del m


# -- Table 2: parameter counts ---------------------------------------------------

@pytest.mark.parametrize("letter", list(TABLE2))
@pytest.mark.parametrize("bn", [False, True])
def test_parameter_counts_table2(letter, bn):
    expected = TABLE2[letter] + (BN_EXTRA[letter] if bn else 0)
    assert count_params(letter, batch_norm=bn) == expected


def test_hidden_width_and_init_defaults_are_the_command_lines():
    """``vgg(name, width=w)`` builds the network ``train --width w`` builds: hidden
    = hidden_width(w) = max(16, round(4096 w)) and Glorot's initialisation."""
    from tinyvgg.cli import _config_from_args, build_parser
    from tinyvgg.models import DEFAULT_INIT, hidden_width
    assert [hidden_width(w) for w in (1, 0.25, 1 / 16, 1 / 1024)] == [4096, 1024, 256, 16]
    m = vgg("vgg11", width=1 / 16, input_size=32, num_classes=10)
    assert m.config["hidden"] == 256 and m.config["init"] == DEFAULT_INIT == "glorot"
    assert m.num_params() == count_params("vgg11", width=1 / 16, input_size=32, num_classes=10) \
        == count_params("vgg11", width=1 / 16, input_size=32, num_classes=10, hidden=256)
    cfg = _config_from_args(build_parser().parse_args(["train", "--width", "0.0625"]))
    assert cfg.hidden is None and cfg.init == DEFAULT_INIT  # the trainer then asks hidden_width
    assert vgg("vgg11", width=1 / 16, input_size=32, init="paper").config["init"] == "paper"


def test_parameter_counts_with_bn_known_values():
    assert count_params("vgg13_bn") == 133_053_736
    assert count_params("E", batch_norm=True) == 143_678_248


def test_full_size_model_matches_count(full_a):
    assert full_a.num_params() == count_params("vgg11") == 132_863_336
    rows = full_a.layer_table()
    assert sum(r["params"] for r in rows) == full_a.num_params()
    # torchvision reports 7.61 GMACs for vgg11 at 224.
    assert round(sum(r["macs"] for r in rows) / 1e7) / 100 == 7.61
    text = full_a.summary()
    assert "132,863,336" in text
    assert rows[-1]["output_shape"] == (1000,)
    x = np.zeros((1, 3, 224, 224), np.float32)
    assert full_a.forward(x).shape == (1, 1000)


@pytest.mark.parametrize("letter", list(CONFIGS))
def test_count_matches_small_builds(letter):
    for bn in (False, True):
        m = vgg(letter, batch_norm=bn, **SMALL)
        assert m.num_params() == count_params(letter, batch_norm=bn, **{k: v for k, v in SMALL.items()})
        assert sum(r["params"] for r in m.layer_table()) == m.num_params()


# -- Table 1: layer sequences ----------------------------------------------------

@pytest.mark.parametrize("letter", list(CONFIGS))
def test_table1_layer_sequence(letter):
    m = vgg(letter, **SMALL)
    cs = convs(m)
    assert len(cs) == CONV_COUNT[letter]
    assert sum(isinstance(l, MaxPool2d) for l in m.layers) == 5
    kernels = [l.kernel_size for _, l in cs]
    ones = [i for i, k in enumerate(kernels) if k == (1, 1)]
    if letter == "C":
        # conv1-256 closes block 3, conv1-512 closes blocks 4 and 5.
        assert ones == [6, 9, 12]
        assert [cs[i][1].out_channels for i in ones] == [16, 32, 32]
        assert all(cs[i][1].padding == (0, 0) for i in ones)
    else:
        assert ones == []
    assert all(l.padding == (1, 1) for _, l in cs if l.kernel_size == (3, 3))
    # Every conv is followed by a ReLU.
    for i, layer in enumerate(m.layers):
        if isinstance(layer, Conv2d):
            assert isinstance(m.layers[i + 1], ReLU)
    lrn = [i for i, l in enumerate(m.layers) if isinstance(l, LocalResponseNorm)]
    if letter == "A-LRN":
        assert lrn == [2] and isinstance(m.layers[3], MaxPool2d)
        l = m.layers[2]
        assert (l.size, l.alpha, l.beta, l.k) == (5, 1e-4, 0.75, 2.0)
    else:
        assert lrn == []
    cl = m.classifier
    assert [type(l) for l in cl] == [Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear]
    assert m.layers[:len(m.features)] == m.features and m.layers[-7:] == cl


def test_torchvision_feature_indices():
    conv_idx = lambda m: [int(n.split(".")[1]) for n, _ in convs(m)]  # noqa: E731
    assert conv_idx(vgg("vgg11", **SMALL)) == [0, 3, 6, 8, 11, 13, 16, 18]
    assert conv_idx(vgg("vgg19", **SMALL)) == [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]
    m = vgg("vgg16", **SMALL)
    keys = list(m.state_dict())
    assert keys[0] == "features.0.weight" and keys[25] == "features.28.bias"
    assert keys[26:] == [f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")]
    mb = vgg("vgg16_bn", **SMALL)
    sd = mb.state_dict()
    assert list(sd)[:7] == ["features.0.weight", "features.0.bias", "features.1.weight", "features.1.bias",
                            "features.1.running_mean", "features.1.running_var",
                            "features.1.num_batches_tracked"]
    assert "features.40.weight" in sd and "features.41.running_var" in sd and "features.43.weight" not in sd
    nbt = sd["features.1.num_batches_tracked"]
    assert nbt.dtype == np.int64 and nbt.shape == ()
    # BN sits between conv and ReLU.
    assert isinstance(mb.layers[1], BatchNorm2d) and isinstance(mb.layers[2], ReLU)
    # A-LRN: conv, relu, LRN, maxpool, conv...
    la = vgg("vgg11_lrn", **SMALL)
    assert [n for n, _ in convs(la)][:2] == ["features.0", "features.4"]
    assert m.layer_names[-8:] == ["flatten"] + [f"classifier.{i}" for i in range(7)]


def test_names_letters_and_errors():
    assert resolve_name("vgg16") == ("D", False)
    assert resolve_name("D") == ("D", False)
    assert resolve_name("vgg16_bn") == ("D", True)
    assert resolve_name("A-LRN") == ("A-LRN", False)
    assert resolve_name("vgg16_1x1") == ("C", False)
    assert resolve_name("E", batch_norm=True) == ("E", True)
    assert vgg("vgg13_bn", **SMALL).config["batch_norm"] is True
    with pytest.raises(ValueError) as e:
        vgg("vgg17", **SMALL)
    for n in ("vgg11", "vgg11_lrn", "vgg13", "vgg16_1x1", "vgg16", "vgg19"):
        assert repr(n) in str(e.value)


# -- width, input size, config ---------------------------------------------------

def test_width_scaling():
    m = vgg("A", width=0.25, input_size=64, hidden=16, num_classes=3)
    assert [l.out_channels for _, l in convs(m)] == [16, 32, 64, 64, 128, 128, 128, 128]
    assert m.classifier[0].in_features == 128 * 2 * 2
    assert m.classifier[0].out_features == 16 and m.classifier[6].out_features == 3
    tiny = vgg("A", width=0.001, input_size=32, hidden=4, num_classes=2)
    assert min(l.out_channels for _, l in convs(tiny)) == 1
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    assert m.forward(x).shape == (2, 3)


@pytest.mark.parametrize("size", [100, 16, 0, -32, 224.5, "224"])
def test_bad_input_size(size):
    with pytest.raises(ValueError, match="input_size"):
        vgg("A", input_size=size, width=1 / 16, hidden=8)


def test_forward_rejects_wrong_image_size():
    m = vgg("A", **SMALL)
    with pytest.raises(ValueError, match="32"):
        m.forward(np.zeros((1, 3, 64, 64), np.float32))


def test_config_rebuilds_same_architecture():
    m = vgg("vgg19_bn", dropout=0.3, dtype=np.float64, init="he", **SMALL)
    assert isinstance(m, VGG)
    m2 = vgg(**m.config)
    assert m2.config == m.config
    assert [n for n, _, _ in m2.named_parameters()] == [n for n, _, _ in m.named_parameters()]
    assert m2.dtype == np.float64 and m2.classifier[2].p == 0.3


def test_named_parameters_grads_and_to():
    m = vgg("A", dtype=np.float64, **SMALL)
    named = list(m.named_parameters())
    assert named[0][0] == "features.0.weight" and named[1][0] == "features.0.bias"
    assert all(g is None for _, _, g in named)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32))
    y = m.forward(x, train=True)
    dx = m.backward(np.ones_like(y))
    assert dx.shape == x.shape
    for name, p, g in m.named_parameters():
        assert g is not None and g.shape == p.shape, name
    assert m.to("cpu") is m
    assert m.num_params() == sum(p.size for _, p, _ in m.named_parameters())


# -- summary ---------------------------------------------------------------------

def test_summary_rows_and_receptive_fields():
    m = vgg("vgg16", **SMALL)
    rows = m.layer_table()
    text = m.summary()
    for name in m.layer_names:
        assert name in text
    assert f"{m.num_params():,}" in text
    rf = {r["name"]: r["receptive_field"] for r in rows}
    # Stacks of 3x3 convs: two see 5x5, three would see 7x7 (section 2.3).
    assert rf["features.0"] == 3 and rf["features.2"] == 5 and rf["features.4"] == 6
    assert rf["features.30"] == 212  # the last max-pool of VGG-16
    conv0 = rows[0]
    assert conv0["macs"] == 32 * 32 * 4 * 3 * 9
    assert conv0["output_shape"] == (4, 32, 32)
    fc = [r for r in rows if r["name"] == "classifier.0"][0]
    assert fc["macs"] == 32 * 32 and fc["params"] == 32 * 32 + 32


# -- dense evaluation (section 3.2) ----------------------------------------------

@pytest.mark.parametrize("bn", [False, True])
def test_fully_convolutional_equals_model_at_training_size(bn):
    backend.seed(1)
    m = vgg("vgg13", batch_norm=bn, dtype=np.float64, init="glorot", **SMALL)
    if bn:  # non-trivial running statistics
        m.forward(np.random.default_rng(3).standard_normal((4, 3, 32, 32)), train=True)
    x = np.random.default_rng(2).standard_normal((3, 3, 32, 32))
    fcn = m.to_fully_convolutional()
    smap = fcn.forward(x)
    assert smap.shape == (3, 10, 1, 1)
    ref = m.forward(x)
    assert np.max(np.abs(fcn.score(x) - ref)) <= 1e-5 * np.max(np.abs(ref))
    # Larger input: a score map whose average is the score.
    big = np.random.default_rng(4).standard_normal((2, 3, 64, 96))
    smap = fcn.forward(big)
    assert smap.shape == (2, 10, 2, 3)
    np.testing.assert_allclose(fcn.score(big), smap.mean(axis=(2, 3)))
    dx = fcn.backward(np.ones_like(smap))
    assert dx.shape == big.shape


def test_fully_convolutional_shares_weights():
    m = vgg("A", dtype=np.float64, **SMALL)
    fcn = m.to_fully_convolutional()
    fc = dict(fcn.named_layers())
    assert isinstance(fc["classifier.0"], Conv2d) and fc["classifier.0"].kernel_size == (1, 1)
    assert np.shares_memory(fc["classifier.0"].params["weight"], m.classifier[0].params["weight"])
    assert fc["features.0"].params["weight"] is m.features[0].params["weight"]
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32))
    m.classifier[6].params["bias"][...] += 1.0  # the FCN sees the change
    np.testing.assert_allclose(fcn.score(x), m.forward(x), rtol=1e-10, atol=1e-12)


def test_fully_convolutional_at_224():
    backend.seed(2)
    m = vgg("vgg11", width=1 / 16, input_size=224, hidden=64, num_classes=5, dtype=np.float64,
            init="glorot")
    fcn = m.to_fully_convolutional()
    assert fcn.layers[-7].kernel_size == (7, 7)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 224, 224))
    ref = m.forward(x)
    assert np.max(np.abs(fcn.score(x) - ref)) <= 1e-5 * np.max(np.abs(ref))
    assert fcn.forward(rng.standard_normal((1, 3, 256, 256))).shape == (1, 5, 2, 2)   # 8 - 7 + 1
    assert fcn.forward(rng.standard_normal((1, 3, 384, 384))).shape == (1, 5, 6, 6)   # 12 - 7 + 1
    with pytest.raises(ValueError):
        fcn.forward(rng.standard_normal((1, 3, 192, 224)))


# -- state dicts -----------------------------------------------------------------

def test_state_dict_round_trip_and_dtype_conversion():
    backend.seed(0)
    a = vgg("vgg11_bn", dtype=np.float64, **SMALL)
    a.forward(np.random.default_rng(1).standard_normal((2, 3, 32, 32)), train=True)
    sd = a.state_dict()
    sd["features.0.weight"][...] = 7.0  # a copy: the model is untouched
    assert not np.any(a.features[0].params["weight"] == 7.0)
    sd = a.state_dict()
    backend.seed(9)
    b = vgg("vgg11_bn", dtype=np.float32, **SMALL)
    missing, unexpected = b.load_state_dict(sd)
    assert missing == [] and unexpected == []
    for k, v in b.state_dict().items():
        if k.endswith("num_batches_tracked"):
            assert int(v) == 1
        else:
            assert v.dtype == np.float32
            np.testing.assert_allclose(v, sd[k].astype(np.float32))


def test_load_state_dict_names_every_problem():
    m = vgg("A", **SMALL)
    sd = m.state_dict()
    del sd["features.3.bias"]
    sd["features.99.weight"] = np.zeros(3, np.float32)
    sd["classifier.6.weight"] = np.zeros((11, 32), np.float32)
    before = m.features[0].params["weight"].copy()
    sd["features.0.weight"] = sd["features.0.weight"] + 1
    with pytest.raises(StateDictError) as e:
        m.load_state_dict(sd)
    msg = str(e.value)
    assert isinstance(e.value, KeyError) and isinstance(e.value, ValueError)
    for part in ("features.3.bias", "features.99.weight", "classifier.6.weight", "(11, 32)", "(10, 32)"):
        assert part in msg
    np.testing.assert_array_equal(m.features[0].params["weight"], before)  # nothing was copied
    # strict=False ignores missing/unexpected keys but still refuses wrong shapes.
    with pytest.raises(ValueError, match="classifier.6.weight"):
        m.load_state_dict(sd, strict=False)
    sd["classifier.6.weight"] = np.zeros((10, 32), np.float32)
    missing, unexpected = m.load_state_dict(sd, strict=False)
    assert missing == ["features.3.bias"] and unexpected == ["features.99.weight"]
    np.testing.assert_array_equal(m.features[0].params["weight"], before + 1)


# -- initialisation ----------------------------------------------------------------

def _weights(m):
    return {n: p.copy() for n, p, _ in m.named_parameters()}


def test_init_schemes_statistics():
    kw = dict(width=0.25, input_size=32, hidden=512, num_classes=10)
    conv = "features.16.weight"  # (128, 128, 3, 3): 147k values
    fc = "classifier.3.weight"   # (512, 512)
    w = _weights(vgg("A", init="paper", **kw))
    assert abs(w[conv].std() / 0.01 - 1) < 0.02 and abs(w[fc].std() / 0.01 - 1) < 0.02
    assert all(np.all(v == 0) for n, v in w.items() if n.endswith("bias"))
    w = _weights(vgg("A", init="he", **kw))
    assert abs(w[conv].std() / math.sqrt(2 / (128 * 9)) - 1) < 0.02
    assert abs(w["features.0.weight"].std() / math.sqrt(2 / (16 * 9)) - 1) < 0.25  # 432 values
    assert abs(w[fc].std() / 0.01 - 1) < 0.02
    w = _weights(vgg("A", init="glorot", **kw))
    a = math.sqrt(6 / (128 * 9 + 128 * 9))
    assert np.abs(w[conv]).max() <= a and abs(w[conv].std() / (a / math.sqrt(3)) - 1) < 0.02
    a = math.sqrt(6 / (512 + 512))
    assert np.abs(w[fc]).max() <= a and abs(w[fc].std() / (a / math.sqrt(3)) - 1) < 0.02
    mb = vgg("A", init="he", batch_norm=True, **SMALL)
    assert np.all(mb.features[1].params["weight"] == 1) and np.all(mb.features[1].params["bias"] == 0)


def test_init_reproducible_and_unknown_scheme():
    for scheme in ("paper", "glorot", "he"):
        backend.seed(5)
        w1 = _weights(vgg("B", init=scheme, **SMALL))
        backend.seed(5)
        w2 = _weights(vgg("B", init=scheme, **SMALL))
        backend.seed(6)
        w3 = _weights(vgg("B", init=scheme, **SMALL))
        assert all(np.array_equal(w1[k], w2[k]) for k in w1)
        assert not np.array_equal(w1["features.0.weight"], w3["features.0.weight"])
    # init="paper" is what initialize(model, "paper") draws from the same seed.
    backend.seed(5)
    w1 = _weights(vgg("B", init="paper", **SMALL))
    m = vgg("B", init="he", **SMALL)
    backend.seed(5)
    w2 = _weights(initialize(m, "paper"))
    assert all(np.array_equal(w1[k], w2[k]) for k in w1)
    with pytest.raises(ValueError, match="orthogonal"):
        initialize(m, "orthogonal")
    with pytest.raises(ValueError, match="xavier"):
        vgg("B", init="xavier", **SMALL)


# -- init_from (section 3.1) -------------------------------------------------------

@pytest.mark.parametrize("deeper", ["B", "C", "D", "E"])
def test_init_from_copies_first_four_convs_and_fcs(deeper):
    backend.seed(0)
    a = vgg("A", init="glorot", **SMALL)
    backend.seed(1)
    d = vgg(deeper, init="glorot", **SMALL)
    before = _weights(d)
    assert init_from(d, a) is d
    after = _weights(d)
    wa = _weights(a)
    pos = d.conv_positions
    copied = {pos[(1, 1)]: "features.0", pos[(2, 1)]: "features.3", pos[(3, 1)]: "features.6",
              pos[(3, 2)]: "features.8", "classifier.0": "classifier.0",
              "classifier.3": "classifier.3", "classifier.6": "classifier.6"}
    for name in after:
        layer, p = name.rsplit(".", 1)
        if layer in copied:
            np.testing.assert_array_equal(after[name], wa[f"{copied[layer]}.{p}"])
            assert not np.shares_memory(dict(d.named_layers())[layer].params[p],
                                        dict(a.named_layers())[copied[layer]].params[p])
        else:
            np.testing.assert_array_equal(after[name], before[name])
    assert sum(not np.array_equal(before[k], after[k]) for k in before if k.endswith("weight")) == 7


def test_init_from_rejects_mismatched_shapes():
    a = vgg("A", width=1 / 16, input_size=32, hidden=64, num_classes=10)
    d = vgg("D", **SMALL)
    before = _weights(d)
    with pytest.raises(ValueError) as e:
        init_from(d, a)
    msg = str(e.value)
    assert "classifier.0" in msg and "(64, 32)" in msg and "(32, 32)" in msg
    assert all(np.array_equal(before[k], v) for k, v in _weights(d).items())  # untouched
    with pytest.raises(ValueError, match="features"):
        init_from(vgg("D", **SMALL), vgg("A", width=1 / 8, input_size=32, hidden=32, num_classes=10))


# -- whole-network gradient checks -------------------------------------------------

@pytest.mark.parametrize("name,bn", [("vgg11", False), ("vgg11", True), ("vgg11_lrn", False),
                                     ("vgg16_1x1", False)])
def test_gradient_check_small_vgg(name, bn):
    # Glorot keeps activations and gradients O(1) through the small classifier; h=1e-5
    # because at h=1e-6 the round-off of a whole network's output reaches ~1e-6
    # relative on input coordinates with small gradients (the net is piecewise
    # linear, so a larger h costs no truncation error away from kinks).
    backend.seed(0)
    m = vgg(name, batch_norm=bn, dtype=np.float64, init="glorot", **SMALL)
    x = np.random.default_rng(10).standard_normal((2, 3, 32, 32))
    report = check_gradients(m, x, train=True, max_coords=6, seed=0, h=1e-5)
    # A conv bias right before BatchNorm has gradient 0 (BN subtracts the batch mean):
    # the check reports it as zero up to round-off, and judges every other array as usual.
    pre_bn = {f"{n}.bias" for n, l in convs(m)} if bn else set()
    assert report.passed(1e-6), str(report)
    assert all(r.checked > 0 for r in report.results)
    assert {r.name for r in report.results if r.zero} == pre_bn, str(report)
    if bn:
        scale = max(np.abs(g).max() for _, _, g in m.named_parameters())
        for n, _, g in m.named_parameters():
            if n in pre_bn:
                assert np.abs(g).max() <= 1e-10 * scale, n


@pytest.mark.parametrize("bn", [False, True], ids=["plain", "bn"])
@pytest.mark.parametrize("name", ["vgg11", "vgg11_lrn", "vgg13", "vgg16_1x1", "vgg16", "vgg19"])
def test_gradcheck_command_passes_every_configuration(name, bn, capsys):
    # The README's `python -m tinyvgg gradcheck vgg11 --width 0.0625 --batch-norm` printed
    # FAILED: the biases that feed BatchNorm (true gradient 0) were two round-off values
    # compared relatively, or every coordinate was taken for a kink; the deeper BN networks
    # also hit small ReLU kinks that one-sided slopes do not see. Fewer coordinates than
    # the command's default 16 keep this fast (16 is checked by test_readme for vgg11).
    from tinyvgg.cli import main

    argv = ["gradcheck", name, "--width", "0.0625", "--coords", "4"] + (["--batch-norm"] if bn else [])
    code = main(argv)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "PASSED" in out and " nan" not in out
    assert ("~0" in out) == bn


def test_gradcheck_catches_a_small_error_in_a_bias_before_batchnorm():
    # The bias of a conv followed by BatchNorm has a true gradient of 0. A backward that
    # gets it wrong by 1e-9 (the other gradients are ~1e-4) must fail, not hide as "~0".
    def build():
        backend.seed(0)
        return vgg("vgg11", batch_norm=True, dtype=np.float64, init="he", **SMALL)

    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32))
    good = check_gradients(build(), x, train=True, max_coords=4, seed=0)
    assert good.passed(1e-6), str(good)
    assert good["features.8.bias"].zero and good["features.8.bias"].max_error == 0.0

    m = build()
    conv = dict(m.named_layers())["features.8"]
    correct_backward = conv.backward

    def wrong_backward(dy):
        dx = correct_backward(dy)
        conv.grads["bias"] = conv.grads["bias"] + 1e-9
        return dx

    conv.backward = wrong_backward
    bad = check_gradients(m, x, train=True, max_coords=4, seed=0)
    assert not bad.passed(1e-6)
    assert not bad["features.8.bias"].zero
    assert bad["features.8.bias"].max_error > 0.5, str(bad)
    others = [r for r in bad.results if r.name != "features.8.bias"]
    assert max(r.max_error for r in others) <= 1e-6, str(bad)


def test_gradcheck_report_with_an_unchecked_array_does_not_pass():
    # An array whose every sampled coordinate sat at a kink has no error (nan); the report
    # used to take max() over the others and pass with that array never checked.
    from tinyvgg.gradcheck import ArrayResult, GradcheckReport

    report = GradcheckReport([ArrayResult("weight", (3,), 3, 0, 1e-9),
                              ArrayResult("bias", (3,), 0, 3, float("nan"))])
    assert report.unchecked == ["bias"]
    assert not report.passed(1e-6)
    assert math.isnan(report.max_error)
    assert "bias" in str(report) and "another seed" in str(report)


# -- a non-host device (stand-in: NumPy underneath, a marker array type) ----------------

# The shared stand-in's array module returns device arrays from every array it
# creates (np.empty included), as CuPy does; plain NumPy as the module would let
# freshly allocated buffers look like host arrays.
from tests.standin import StandInArray as _DeviceArray  # noqa: E402
from tests.standin import make_device  # noqa: E402


@pytest.fixture
def standin_device():
    dev = make_device()
    backend.use(dev)
    try:
        yield dev
    finally:
        backend.use("cpu")


def test_models_on_a_non_host_device(standin_device):
    backend.seed(3)
    m = vgg("vgg11_bn", init="glorot", **SMALL)
    on_device = lambda model: all(type(p) is _DeviceArray for _, p, _ in model.named_parameters())  # noqa: E731
    assert on_device(m)
    x = backend.to_device(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))
    m.backward(m.forward(x, train=True) * 0 + 1)
    sd = m.state_dict()
    assert all(type(v) is np.ndarray for v in sd.values())  # host arrays
    m.load_state_dict(sd)
    assert on_device(m)
    d = init_from(vgg("D", **SMALL), m)
    assert on_device(d)
    np.testing.assert_allclose(backend.to_host(m.to_fully_convolutional().score(x)),
                               backend.to_host(m.forward(x)), rtol=1e-4, atol=1e-6)
    backend.use("cpu")
    backend.seed(3)
    cpu = vgg("vgg11_bn", init="glorot", **SMALL).state_dict()
    backend.use(standin_device)
    backend.seed(3)
    dev = vgg("vgg11_bn", init="glorot", **SMALL).state_dict()
    assert all(np.array_equal(cpu[k], dev[k]) for k in cpu)  # same seed, same weights


def test_model_hooks_observe_every_layer_without_changing_anything():
    """``model.add_hook``: each layer's output on the way forward and the gradient
    reaching it on the way back, the same arrays a layer-by-layer run gives; the
    layers are never modified and removing the hook restores the plain loop."""
    backend.seed(0)
    model = vgg("vgg11", num_classes=4, input_size=32, width=1 / 16, hidden=16, dropout=0.0)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    dlogits = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)

    class Watch:
        def __init__(self):
            self.ys, self.dys = {}, {}

        def after_forward(self, name, layer, y, train):
            self.ys[name] = y.copy()

        def before_backward(self, name, layer, dy):
            self.dys[name] = dy.copy()

    w = model.add_hook(Watch())
    logits = model.forward(x, train=True)
    dx = model.backward(dlogits)
    assert list(w.ys) == model.layer_names and list(w.dys) == model.layer_names[::-1]
    h = x
    for name, layer in model.named_layers():
        h = layer.forward(h, train=True)
        np.testing.assert_array_equal(w.ys[name], h)
    d = dlogits
    for name, layer in reversed(model.named_layers()):
        np.testing.assert_array_equal(w.dys[name], d)
        d = layer.backward(d)
    np.testing.assert_array_equal(d, dx)
    np.testing.assert_array_equal(w.ys["classifier.6"], logits)
    assert not any("forward" in l.__dict__ or "backward" in l.__dict__ for l in model.layers)
    model.remove_hook(w)
    w.ys.clear()
    model.forward(x, train=True)
    assert w.ys == {}


@pytest.mark.parametrize("batch_norm", [False, True])
def test_the_models_in_place_relus_change_no_number(batch_norm):
    """The VGG models' ReLUs run in place (as torchvision's): logits, input gradient
    and every parameter gradient equal those of the same model with out-of-place
    ReLUs, in training and in evaluation."""
    def build():
        backend.seed(0)
        return vgg("vgg11", num_classes=4, input_size=32, width=1 / 16, hidden=16, dropout=0.0,
                   batch_norm=batch_norm)
    fast, slow = build(), build()
    relus = [l for l in slow.layers if isinstance(l, ReLU)]
    assert len(relus) == 10 and all(l.inplace for l in relus)  # 8 in the features, 2 in the classifier
    for l in relus:
        l.inplace = False
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    dlogits = np.random.default_rng(1).standard_normal((4, 4)).astype(np.float32)
    for train in (False, True):  # evaluation, then the training pass backward runs through
        np.testing.assert_array_equal(fast.forward(x, train=train), slow.forward(x, train=train))
    np.testing.assert_array_equal(fast.backward(dlogits), slow.backward(dlogits))
    for (name, a), (_, b) in zip(fast.named_layers(), slow.named_layers()):
        for k in a.grads:
            np.testing.assert_array_equal(a.grads[k], b.grads[k], err_msg=f"{name}.{k}")


def test_b_5x5_is_b_with_each_pair_of_3x3_replaced_by_one_5x5():
    """Section 4.1's shallow net: B's five blocks of two 3x3 convolutions, each one 5x5
    (padding 2, the same output size and receptive field), and its exact count at 224:
    5x5 layers 4,864 + 204,928 + 819,456 + 3,277,312 + 6,554,112, fully connected
    102,764,544 + 16,781,312 + 4,097,000."""
    b, s = vgg("vgg13", **SMALL), vgg("vgg13_5x5", **SMALL)
    cb, cs = convs(b), convs(s)
    assert [l.kernel_size for _, l in cs] == [(5, 5)] * 5 and all(l.padding == (2, 2) for _, l in cs)
    assert [l.out_channels for _, l in cb][1::2] == [l.out_channels for _, l in cs]
    assert count_params("vgg13_5x5") == 134_503_528 == (4_864 + 204_928 + 819_456 + 3_277_312 + 6_554_112
                                                        + 102_764_544 + 16_781_312 + 4_097_000)
    assert count_params("vgg13_5x5") > TABLE2["B"]  # more weights, fewer non-linearities
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert s.forward(x).shape == b.forward(x).shape == (2, 10)

