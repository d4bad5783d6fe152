"""Vision models: shapes on odd image / patch sizes, the alternating scan direction, bilateral pooling,
ViT parameter parity, the bidirectional mLSTM layer, and a tiny training run on sklearn's digits."""
import numpy as np
import pytest
import torch

from flashxlstm.models.vision import ViL, ViLBlock, ViLConfig, ViT, ViTConfig, matched_vit, num_parameters
from flashxlstm.nn.bidirectional import BidirectionalmLSTMLayer


@pytest.mark.parametrize("image,patch", [((9, 7), 3), ((8, 8), 2), ((11, 5), (4, 2))])
def test_shapes_odd_sizes(image, patch):
    torch.manual_seed(0)
    x = torch.randn(3, 2, *image)
    vil = ViL(ViLConfig(image_size=image, patch_size=patch, in_channels=2, num_classes=5, dim=32, depth=2))
    vit = ViT(ViTConfig(image_size=image, patch_size=patch, in_channels=2, num_classes=5, dim=32, depth=1))
    assert vil(x).shape == (3, 5) and vit(x).shape == (3, 5)
    with pytest.raises(ValueError, match="expected images of shape"):
        vil(torch.randn(3, 2, image[0] + 1, image[1]))


def test_reversed_block_is_flipped_forward_block():
    torch.manual_seed(0)
    fwd, rev = ViLBlock(32, reverse=False, num_heads=2), ViLBlock(32, reverse=True, num_heads=2)
    rev.load_state_dict(fwd.state_dict())
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    fwd, rev = fwd.double(), rev.double()
    torch.testing.assert_close(rev(x), fwd(x.flip(1)).flip(1))
    # the reversed block is causal from the end: token t depends only on tokens >= t
    y = rev(x)
    x2 = x.clone()
    x2[:, 2] += 1.0
    torch.testing.assert_close(rev(x2)[:, 3:], y[:, 3:])
    assert not torch.allclose(rev(x2)[:, :3], y[:, :3])


def test_vil_alternates_direction():
    vil = ViL(ViLConfig(image_size=8, patch_size=2, depth=4, dim=32))
    assert [b.reverse for b in vil.blocks] == [False, True, False, True]


@pytest.mark.parametrize("pooling", ["bilateral_avg", "bilateral_concat", "mean"])
def test_pooling(pooling):
    vil = ViL(ViLConfig(image_size=8, patch_size=2, dim=16, depth=1, num_heads=2, pooling=pooling))
    x = torch.randn(2, 16, 16)
    want = {"bilateral_avg": (x[:, 0] + x[:, -1]) / 2, "bilateral_concat": torch.cat([x[:, 0], x[:, -1]], -1),
            "mean": x.mean(1)}[pooling]
    torch.testing.assert_close(vil.pool(x), want)
    assert vil.head.in_features == want.shape[-1]
    with pytest.raises(ValueError, match="pooling"):
        ViLConfig(pooling="cls")


def test_vit_parameter_parity():
    vil = ViL(ViLConfig(image_size=28, patch_size=4, dim=64, depth=8))
    vit = ViT(matched_vit(ViTConfig(image_size=28, patch_size=4, dim=64), num_parameters(vil)))
    assert abs(num_parameters(vit) - num_parameters(vil)) / num_parameters(vil) < 0.10


def test_bidirectional_layer_sees_both_ends():
    torch.manual_seed(0)
    layer = BidirectionalmLSTMLayer(16, num_heads=2).double()
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    y = layer(x)
    fwd, _ = layer.forward_layer(x)
    bwd, _ = layer.backward_layer(x.flip(1))
    torch.testing.assert_close(y, fwd + bwd.flip(1))
    x2 = x.clone()
    x2[:, -1] += 1.0
    assert not torch.allclose(layer(x2)[:, 0], y[:, 0])  # the first token sees the last
    with pytest.raises(ValueError, match="combine"):
        BidirectionalmLSTMLayer(16, combine="max")
    assert BidirectionalmLSTMLayer(16, num_heads=2, combine="concat")(x.float()).shape == (2, 6, 16)


def test_vil_learns_digits():
    from sklearn.datasets import load_digits

    from flashxlstm.tasks.harness import TrainConfig, evaluate, train
    torch.manual_seed(0)
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1400], perm[1400:]

    def sample(rng: np.random.Generator):
        idx = torch.from_numpy(rng.integers(0, len(tr), 64))
        return x[tr[idx]], y[tr[idx]]

    test = [(x[te[i:i + 200]], y[te[i:i + 200]]) for i in range(0, len(te), 200)]
    model = ViL(ViLConfig(image_size=8, patch_size=2, dim=32, depth=2, num_heads=2))
    train(model, sample, {"test": test}, TrainConfig(steps=60, lr=3e-3, warmup_steps=5, eval_every=60))
    assert evaluate(model, test, "cpu")["accuracy"] > 0.5  # chance is 0.1


def test_experiment_vision_digits_end_to_end(tmp_path):
    import json

    from flashxlstm.cli.main import main
    rc = main(["experiment", "vision", "--model", "vil", "--dataset", "digits", "--out", str(tmp_path),
               "--steps", "60", "--batch-size", "64", "--lr", "3e-3", "--patch-size", "2", "--dim", "32",
               "--depth", "2", "--num-heads", "2", "--grad-clip", "1.0", "--quiet"])
    assert rc in (0, None)
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["test_accuracy"] > 0.5 and res["tokens_per_image"] == 16 and res["eval_images_per_s"] > 0
    assert res["augment"]["pad"] == 0 and res["augment"]["hflip"] == 0  # digits: no augmentation by default
    assert res["train_config"]["grad_clip"] == 1.0


def test_idx_reader_and_missing_fashion_mnist(tmp_path):
    import gzip

    from flashxlstm.tasks.vision import load_fashion_mnist, read_idx
    arr = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    with gzip.open(tmp_path / "a.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in arr.shape) + arr.tobytes())
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), arr)
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)
    # a split written as idx files loads as (N, 1, H, W) float32 pixels / 255 and int64 labels
    from flashxlstm.tasks.vision import FASHION_FILES, load_dataset
    labels = np.array([3, 9], dtype=np.uint8)
    for img, lab in FASHION_FILES.values():
        for name, a in ((img, arr), (lab, labels)):
            with gzip.open(tmp_path / name, "wb") as f:
                f.write(bytes([0, 0, 8, a.ndim]) + b"".join(n.to_bytes(4, "big") for n in a.shape) + a.tobytes())
    data = load_dataset("fashion-mnist", str(tmp_path))
    x, y = data["test"]
    assert x.dtype == torch.float32 and x.shape == (2, 1, 3, 5) and y.dtype == torch.int64
    torch.testing.assert_close(x[:, 0], torch.from_numpy(arr.astype(np.float32)) / 255.0)
    assert y.tolist() == [3, 9]


@pytest.mark.parametrize("K,bias,S", [(4, False, 7), (0, False, 5), (4, True, 2), (3, True, 9)])
def test_vil_layer_equals_mlstm_layer(K, bias, S):
    """The ViL's fused-glue layer against nn's mLSTMLayer in float64: outputs, final state and all gradients
    (random weights; atol 1e-6 covers the normalizer's conditioning at random weights, agreement is ~1e-15
    where it is well conditioned)."""
    from flashxlstm.models.vision.vil_layer import ViLmLSTMLayer
    from flashxlstm.nn.mlstm_layer import mLSTMLayer
    torch.manual_seed(0)
    kw = dict(num_heads=2, conv1d_kernel_size=K, qkv_proj_blocksize=4, bias=bias, backend="chunkwise",
              chunk_size=4, round_proj_up_to_multiple_of=8)
    ref, fast = mLSTMLayer(12, **kw).double(), ViLmLSTMLayer(12, **kw).double()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(3, S, 12, dtype=torch.float64, requires_grad=True)
    (y_ref, st_ref), (y, st) = ref(x), fast(x)
    tol = dict(atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(y, y_ref, **tol)
    for a, b in zip(st, st_ref):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)
    g = torch.randn_like(y)
    grads_ref = torch.autograd.grad(y_ref, [x, *ref.parameters()], g)
    grads = torch.autograd.grad(y, [x, *fast.parameters()], g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, **tol)
    # a carried state or a single step takes mLSTMLayer's own path
    torch.testing.assert_close(fast(x[:, :1])[0], ref(x[:, :1])[0])


def test_vil_fused_glue_same_model():
    torch.manual_seed(0)
    cfg = dict(image_size=8, patch_size=2, dim=16, depth=2, num_heads=2, backend="chunkwise")
    fused, plain = ViL(ViLConfig(**cfg)), ViL(ViLConfig(**cfg, fused_glue=False))
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(fused(x), plain(x), atol=1e-5, rtol=1e-5)
