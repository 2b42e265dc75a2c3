"""msvae.models: network shapes, stage-1 training, checkpoints, resume, save/load."""
import pytest
import torch

from conftest import toy_images
from msvae.losses import BetaVAELoss
from msvae.models import ConvDecoder, ConvEncoder, DisentangledVAE, MLPDecoder, MLPEncoder


def test_network_shapes():
    x = torch.rand(3, 1, 64, 64)
    mu, logvar = ConvEncoder(latent_dim=7)(x)
    assert mu.shape == logvar.shape == (3, 7)
    assert ConvDecoder(latent_dim=7)(mu).shape == (3, 1, 64, 64)
    assert ConvDecoder(latent_dim=5, channels=3)(torch.randn(2, 5)).shape == (2, 3, 64, 64)
    mu, logvar = MLPEncoder(11, 4)(torch.randn(5, 11))
    assert mu.shape == (5, 4)
    assert MLPDecoder(4, 11)(mu).shape == (5, 11)


@pytest.mark.parametrize("size, stride, padding, channels_last", [
    (32, 2, 1, True), (7, 2, 1, False), (5, 3, 0, True), (4, 1, 2, False)])
def test_to_image_transposed_convolution_is_nn_conv_transpose2d(size, stride, padding, channels_last):
    """Its matrix-product-and-fold path computes the same function, value and gradients, in float64."""
    from torch.nn.functional import conv_transpose2d
    from msvae.models.networks import ToImageConvTranspose2d

    torch.manual_seed(0)
    layer = ToImageConvTranspose2d(6, 1, 4, stride, padding).double()
    x = torch.randn(3, 6, size, size + 1, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    ours = layer(x)
    theirs = conv_transpose2d(x, layer.weight, layer.bias, stride, padding)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(theirs)
    grads = torch.autograd.grad(ours, (x, layer.weight, layer.bias), g)
    expected = torch.autograd.grad(theirs, (x, layer.weight, layer.bias), g)
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    small = ToImageConvTranspose2d(2, 1, 4, stride, padding).double()
    assert torch.autograd.gradcheck(small, (torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True),))
    # more output channels: nn.ConvTranspose2d's own path
    wide = ToImageConvTranspose2d(6, 3, 4, stride, padding).double()
    torch.testing.assert_close(wide(x), conv_transpose2d(x, wide.weight, wide.bias, stride, padding))


@pytest.mark.parametrize("layouts", [("cl", "cl"), ("cl", "contiguous"), ("contiguous", "contiguous"),
                                     ("one", "one"), ("one", "cl")])
def test_cat_channels_is_torch_cat_along_channels(layouts):
    from msvae.models.networks import cat_channels

    torch.manual_seed(0)
    made = []
    for layout in layouts:
        t = torch.randn(2, 1 if layout == "one" else 3, 5, 6)
        made.append(t.contiguous(memory_format=torch.channels_last) if layout == "cl" else t)
    ours = cat_channels(made)
    assert torch.equal(ours, torch.cat(made, 1))
    if all(layout == "cl" for layout in layouts):
        assert ours.is_contiguous(memory_format=torch.channels_last)


def test_image_encoder_starts_at_its_initial_logvar():
    """The logvar half of the head starts at initial_logvar (mu's half untouched); None keeps
    torch's initialisation, so an untrained encoder's log-variances stay near 0."""
    torch.manual_seed(0)
    x = torch.rand(8, 1, 64, 64)
    for initial in (-4.0, -1.5):
        torch.manual_seed(0)
        encoder = ConvEncoder(latent_dim=6, initial_logvar=initial)
        mu, logvar = encoder(x)
        assert torch.equal(encoder.head[-1].bias[6:], torch.full((6,), initial))
        assert abs(logvar.mean().item() - initial) < 0.1 and mu.abs().mean() < 0.2
    torch.manual_seed(0)
    default = ConvEncoder(latent_dim=6, initial_logvar=None)
    assert default.head[-1].bias.abs().max() <= 1 / 256 ** 0.5 and default(x)[1].abs().mean() < 0.2
    torch.manual_seed(0)
    assert torch.equal(DisentangledVAE.for_images(6).encoder.head[-1].bias, default.head[-1].bias)
    assert DisentangledVAE.for_images(6, initial_logvar=-4.0).encoder.head[-1].bias[6:].eq(-4.0).all()


def test_networks_reject_bad_shapes():
    with pytest.raises(ValueError, match=r"x must have shape \[B, 1, 64, 64\]"):
        ConvEncoder()(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"z must have shape \[B, 10\]"):
        ConvDecoder()(torch.rand(2, 3))
    with pytest.raises(ValueError, match="x must have shape"):
        MLPEncoder(5, 2)(torch.rand(2, 6))
    with pytest.raises(ValueError, match="likelihood must be one of"):
        DisentangledVAE.for_images(likelihood="poisson")


def test_fit_lowers_the_loss_and_writes_history():
    torch.manual_seed(0)
    data = toy_images()
    model = DisentangledVAE.for_images(latent_dim=4, width=16, hidden=64)
    history = model.fit(data, steps=60, batch_size=32, lr=1e-3, log_every=10, progress=False)
    assert [h["step"] for h in history] == [10, 20, 30, 40, 50, 60]
    assert {"loss", "recon", "kl", "mi", "tc", "dwkl"} <= set(history[0])
    assert history[-1]["loss"] < 0.7 * history[0]["loss"]
    x = data[:5]
    assert model.encode(x).shape == (5, 4)
    recon = model.reconstruct(x)
    assert recon.shape == x.shape and 0 <= float(recon.min()) and float(recon.max()) <= 1


def test_fit_with_other_loss_and_warmup_on_vectors():
    data = torch.randn(500, 6) @ torch.randn(6, 6)
    model = DisentangledVAE.for_vectors(6, 3, hidden=(32,))
    history = model.fit(data, loss=BetaVAELoss(beta=2.0, recon="gaussian"), steps=80, batch_size=50,
                        lr=3e-3, penalty_warmup=40, log_every=20, progress=False)
    assert history[-1]["loss"] < history[0]["loss"]


def test_checkpoint_resume_continues_exactly(tmp_path):
    data = toy_images(64)
    kwargs = dict(steps=12, batch_size=16, lr=1e-3, log_every=4, progress=False, checkpoint_every=6)
    straight = DisentangledVAE.for_images(latent_dim=3, width=8, hidden=32)
    torch.manual_seed(1)
    state = {k: v.clone() for k, v in straight.state_dict().items()}
    straight.fit(data, **kwargs)

    interrupted = DisentangledVAE.for_images(latent_dim=3, width=8, hidden=32)
    interrupted.load_state_dict(state)
    interrupted.fit(data, checkpoint_dir=tmp_path, **{**kwargs, "steps": 6})
    assert (tmp_path / "stage1.pt").exists()
    resumed = DisentangledVAE.for_images(latent_dim=3, width=8, hidden=32)
    resumed.fit(data, checkpoint_dir=tmp_path, **kwargs)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    # The history carries over: the first run's logs (to its end at step 6), then the resumed ones.
    assert [h["step"] for h in resumed.history] == [4, 6, 8, 12]


def test_save_and_load_round_trip(tmp_path):
    model = DisentangledVAE.for_images(latent_dim=5, width=8, hidden=32).eval()
    model.save(tmp_path / "m.pt")
    loaded = DisentangledVAE.load(tmp_path / "m.pt")
    x = toy_images(4)
    torch.testing.assert_close(loaded.encode(x), model.encode(x))
    assert loaded.config == model.config
    vec = DisentangledVAE.for_vectors(7, 2, hidden=(16, 16))
    vec.save(tmp_path / "v.pt")
    assert DisentangledVAE.load(tmp_path / "v.pt").config == vec.config


def test_time_limit_stops_early(tmp_path):
    model = DisentangledVAE.for_images(latent_dim=2, width=8, hidden=16)
    history = model.fit(toy_images(32), steps=10_000, batch_size=8, time_limit=0.0, log_every=100,
                        progress=False, checkpoint_dir=tmp_path)
    assert [h["step"] for h in history] == [1]
    assert (tmp_path / "stage1.pt").exists()


def test_random_batches_from_tensors_and_datasets():
    from torch.utils.data import Dataset

    from msvae.models.training import RandomBatches

    data = torch.arange(10.0)[:, None]

    class Items(Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return data[i], i

    class Batched(Items):
        def __getitems__(self, indices):
            return [data[i] for i in indices]

    for source in (data, Items(), Batched()):
        batch = next(RandomBatches(source, 6, torch.Generator().manual_seed(0)))
        assert batch.shape == (6, 1) and batch.dtype == torch.float32
        assert set(batch.flatten().tolist()) <= set(range(10))
    with pytest.raises(ValueError, match="data is empty"):
        next(RandomBatches(torch.zeros(0, 2), 4, torch.Generator()))
    with pytest.raises(ValueError, match="batch_size"):
        RandomBatches(data, 11, torch.Generator())


def test_random_batches_draw_without_replacement_and_resume_the_same_stream():
    """Each epoch is a permutation: a batch never repeats a row, ``batch_size = N`` is the whole
    data every time, two epochs of 5 batches of 20 rows cover 100 rows twice each; a stream
    restored from ``state_dict`` (with its generator's state) continues identically."""
    from msvae.models.training import RandomBatches

    data = torch.arange(100.0)[:, None]
    whole = RandomBatches(data, 100, torch.Generator().manual_seed(0))
    for _ in range(3):
        assert sorted(next(whole).flatten().tolist()) == list(range(100))
    stream = RandomBatches(data, 20, torch.Generator().manual_seed(1))
    rows = torch.cat([next(stream) for _ in range(10)]).flatten()
    assert torch.equal(torch.bincount(rows.long(), minlength=100), torch.full((100,), 2))
    assert not torch.equal(rows[:100], rows[100:])  # a fresh permutation each epoch
    uneven = RandomBatches(data, 30, torch.Generator().manual_seed(2))  # 100 % 30: 10 rows left out
    epoch = torch.cat([next(uneven) for _ in range(3)]).flatten()
    assert len(set(epoch.tolist())) == 90
    generator = torch.Generator().manual_seed(3)
    stream = RandomBatches(data, 30, generator)
    for _ in range(4):  # into the second epoch
        next(stream)
    state, generator_state = stream.state_dict(), generator.get_state()
    expected = [next(stream) for _ in range(5)]
    generator = torch.Generator()
    generator.set_state(generator_state)
    resumed = RandomBatches(data, 30, generator)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(expected, [next(resumed) for _ in range(5)]))


def test_fit_trains_the_loss_parameters_and_the_factor_vae_discriminator():
    from msvae.losses import DecompositionLoss, FactorVAELoss
    from msvae.priors import LearnedAnisotropicGaussian

    data = torch.randn(300, 5)
    model = DisentangledVAE.for_vectors(5, 2, hidden=(16,))
    prior = LearnedAnisotropicGaussian(2)
    before = [p.detach().clone() for p in prior.parameters()]
    model.fit(data, loss=DecompositionLoss(prior, beta=1.0, recon="gaussian"), steps=20,
              batch_size=30, lr=1e-2, progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(before, prior.parameters()))

    loss = FactorVAELoss(latent_dim=2, gamma=5.0, recon="gaussian")
    before = [p.detach().clone() for p in loss.discriminator.parameters()]
    history = model.fit(data, loss=loss, steps=10, batch_size=30, log_every=5, progress=False)
    assert "discriminator" in history[-1]
    assert any(not torch.equal(a, b) for a, b in zip(before, loss.discriminator.parameters()))


def test_resume_with_other_settings_is_refused(tmp_path):
    data = toy_images(32)
    model = DisentangledVAE.for_images(latent_dim=2, width=8, hidden=16)
    model.fit(data, steps=2, batch_size=8, lr=1e-3, progress=False, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"other settings \(lr\)"):
        model.fit(data, steps=4, batch_size=8, lr=5e-4, progress=False, checkpoint_dir=tmp_path)



def test_random_batches_with_replacement_are_independent_draws_from_the_generator():
    """``replacement=True`` (the image fits' default): each batch is ``torch.randint`` on the
    generator, the stream every image preset was trained on."""
    from msvae.models.training import RandomBatches

    data = torch.arange(50.0)[:, None]
    stream = RandomBatches(data, 64, torch.Generator().manual_seed(4), replacement=True)  # B > N is fine
    generator = torch.Generator().manual_seed(4)
    for _ in range(3):
        assert torch.equal(next(stream), data[torch.randint(50, (64,), generator=generator)])
