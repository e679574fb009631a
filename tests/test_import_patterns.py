"""The models people bring that the importer used to refuse, each written the way its project
writes it (nanoGPT, timm, the PyTorch examples): each imports, and the imported graph, compiled
with the original's weights, computes the original's outputs (PyTorch is the judge)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compiler import analyse
from compiler.importer import import_model
from tests.test_import_classics import exported_twin

# ---------------------------------------------------------------------------------------------
# Norms called as functions with a module's own weights


class NanoGPTLayerNorm(nn.Module):
    """nanoGPT's model.py: LayerNorm but with an optional bias."""

    def __init__(self, ndim: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(input, self.weight.shape, self.weight, self.bias, 1e-5)


class NanoGPTMLP(nn.Module):
    def __init__(self, n_embd: int, bias: bool) -> None:
        super().__init__()
        self.ln = NanoGPTLayerNorm(n_embd, bias=bias)
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.c_proj(self.gelu(self.c_fc(self.ln(x))))


class LayerNorm2d(nn.LayerNorm):
    """timm/layers/norm.py: LayerNorm for channels of 2D spatial NCHW tensors."""

    def __init__(self, num_channels: int, eps: float = 1e-6, affine: bool = True) -> None:
        super().__init__(num_channels, eps=eps, elementwise_affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        x = x.permute(0, 3, 1, 2)
        return x


class BatchNormAct2d(nn.BatchNorm2d):
    """timm/layers/norm_act.py (abridged): BatchNorm + activation, the norm as F.batch_norm."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.drop = nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.momentum is None:
            exponential_average_factor = 0.0
        else:
            exponential_average_factor = self.momentum
        if self.training and self.track_running_stats:
            if self.num_batches_tracked is not None:
                self.num_batches_tracked.add_(1)
                if self.momentum is None:
                    exponential_average_factor = 1.0 / float(self.num_batches_tracked)
                else:
                    exponential_average_factor = self.momentum
        if self.training:
            bn_training = True
        else:
            bn_training = (self.running_mean is None) and (self.running_var is None)
        x = F.batch_norm(
            x,
            self.running_mean if not self.training or self.track_running_stats else None,
            self.running_var if not self.training or self.track_running_stats else None,
            self.weight,
            self.bias,
            bn_training,
            exponential_average_factor,
            self.eps,
        )
        x = self.drop(x)
        x = self.act(x)
        return x


class ConvNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = BatchNormAct2d(8)
        self.norm = LayerNorm2d(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.bn(self.conv(x)))
        return self.head(x.mean((2, 3)))


def trained_statistics(model: nn.Module) -> nn.Module:
    """Running statistics and affine weights that are not the initial ones, so a norm read
    wrongly shows in the outputs."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith(("running_var", "weight")) and tensor.dim() == 1:
                tensor.uniform_(0.5, 1.5)
            elif name.endswith(("running_mean", "bias")) and tensor.dim() == 1:
                tensor.uniform_(-0.3, 0.3)
    return model.eval()


def round_trips(model: nn.Module, shape: tuple[int, ...], dtype: str = "float32") -> list[str]:
    """Import `model`; the graph's node types (the import itself checks the outputs). A fresh
    input through an exported twin must give the original's outputs too."""
    result = import_model(model, shape, dtype)
    assert result.graph is not None, [str(p) for p in result.problems]
    assert analyse(result.graph).total_params == sum(p.numel() for p in model.parameters())
    generator = torch.Generator().manual_seed(5)
    if dtype == "int64":
        x = torch.randint(0, 11, (2, *shape), generator=generator)
    else:
        x = torch.randn(2, *shape, generator=generator)
    with torch.no_grad():
        expected = model(x)
        expected = expected[0] if isinstance(expected, tuple) else expected
        torch.testing.assert_close(exported_twin(model, result)(x), expected)
    return [node.type for node in result.graph.nodes]


@pytest.mark.parametrize("bias", [True, False])
def test_nanogpt_layer_norm_with_optional_bias_is_a_layer_norm(bias: bool) -> None:
    model = trained_statistics(NanoGPTMLP(8, bias))
    types = round_trips(model, (5, 8))
    assert types.count("LayerNorm") == 1
    norm = next(n for n in import_model(model, (5, 8)).graph.nodes if n.type == "LayerNorm")
    assert norm.params.get("bias", True) is bias


def test_timm_layer_norm_2d_and_batch_norm_act_are_catalog_norms() -> None:
    types = round_trips(trained_statistics(ConvNormNet()), (3, 6, 6))
    assert {"BatchNorm2d", "LayerNorm", "ReLU"} <= set(types)


# ---------------------------------------------------------------------------------------------
# A device branch: the DCGAN example's generator


class DCGANGenerator(nn.Module):
    """examples/dcgan/main.py's Generator (sizes shrunk: nz 8, ngf 4, nc 3)."""

    def __init__(self, ngpu: int, nz: int = 8, ngf: int = 4, nc: int = 3) -> None:
        super().__init__()
        self.ngpu = ngpu
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False),
            nn.BatchNorm2d(ngf * 8),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf * 4),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 4, nc, 4, 2, 1, bias=False),
            nn.Tanh(),
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if (input.is_cuda or input.is_xpu) and self.ngpu > 1:
            output = nn.parallel.data_parallel(self.main, input, range(self.ngpu))
        else:
            output = self.main(input)
        return output


@pytest.mark.parametrize("ngpu", [1, 2])
def test_dcgan_device_branch_takes_the_examples_single_device_branch(ngpu: int) -> None:
    types = round_trips(trained_statistics(DCGANGenerator(ngpu)), (8, 1, 1))
    assert types.count("ConvTranspose2d") == 3 and types[-2:] == ["Tanh", "Output"]


class DCGANDiscriminator(nn.Module):
    """examples/dcgan/main.py's Discriminator (ndf 4, nc 3, a 16x16 picture)."""

    def __init__(self, ngpu: int, ndf: int = 4, nc: int = 3) -> None:
        super().__init__()
        self.ngpu = ngpu
        self.main = nn.Sequential(
            nn.Conv2d(nc, ndf, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ndf * 2),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 2, 1, 4, 1, 0, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if (input.is_cuda or input.is_xpu) and self.ngpu > 1:
            output = nn.parallel.data_parallel(self.main, input, range(self.ngpu))
        else:
            output = self.main(input)

        return output.view(-1, 1).squeeze(1)


def test_dcgan_discriminator_takes_its_branch_and_names_its_squeeze_to_one_number() -> None:
    result = import_model(trained_statistics(DCGANDiscriminator(2)), (3, 16, 16))
    assert [p.op for p in result.problems] == ["Tensor.squeeze"]  # the branch itself is fine
    assert "one number per sample" in str(result.problems[0])

    class Squeezes(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.unsqueeze(1)).squeeze(1)

    assert round_trips(Squeezes().eval(), (4,)) == ["Input", "Reshape", "Linear", "Reshape",
                                                    "Output"]  # fmt: skip


def test_a_branch_on_tensor_values_is_still_refused_with_a_sentence() -> None:
    class Gated(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) if x.sum() > 0 else x

    with pytest.raises(Exception, match="branches on the values of a tensor"):
        import_model(Gated(), (4,))


# ---------------------------------------------------------------------------------------------
# Super-resolution: nn.PixelShuffle and F.pixel_shuffle


class SuperResolutionNet(nn.Module):
    """examples/super_resolution/model.py (channels shrunk from 64 and 32 to 8 and 4)."""

    def __init__(self, upscale_factor: int) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        self.conv1 = nn.Conv2d(1, 8, (5, 5), (1, 1), (2, 2))
        self.conv2 = nn.Conv2d(8, 8, (3, 3), (1, 1), (1, 1))
        self.conv3 = nn.Conv2d(8, 4, (3, 3), (1, 1), (1, 1))
        self.conv4 = nn.Conv2d(4, upscale_factor**2, (3, 3), (1, 1), (1, 1))
        self.pixel_shuffle = nn.PixelShuffle(upscale_factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv1(x))
        x = self.relu(self.conv2(x))
        x = self.relu(self.conv3(x))
        x = self.pixel_shuffle(self.conv4(x))
        return x


def test_super_resolution_pixel_shuffle_imports() -> None:
    model = SuperResolutionNet(3).eval()
    result = import_model(model, (1, 5, 4))
    assert result.graph is not None, [str(p) for p in result.problems]
    shuffle = next(n for n in result.graph.nodes if n.type == "PixelShuffle")
    assert shuffle.params == {"upscale_factor": 3}
    assert analyse(result.graph).infos[shuffle.id].shape == (1, 15, 12)
    round_trips(model, (1, 5, 4))


def test_functional_pixel_shuffle_imports() -> None:
    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 12, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.pixel_shuffle(self.conv(x), 2)

    assert "PixelShuffle" in round_trips(Head().eval(), (3, 4, 4))


# ---------------------------------------------------------------------------------------------
# Learned tensors joined to the activations


class PatchViT(nn.Module):
    """A small vision transformer written as timm's VisionTransformer writes its class token
    and position embedding (_pos_embed) and reads the class token back (x[:, 0])."""

    def __init__(self, embed_dim: int = 8, patch: int = 4, image: int = 8) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, embed_dim, patch, patch)
        patches = (image // patch) ** 2
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, patches + 1, embed_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(embed_dim, 2, 16, 0.0, batch_first=True)
        self.blocks = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


class LayerScaleBlock(nn.Module):
    """torchvision's CNBlock: `self.layer_scale * self.block(input)`, a [C, 1, 1] Parameter,
    and a position table [1, C, H, W] added to a feature map as a plain Parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.skip = nn.Conv2d(3, 6, 1)
        self.pos = nn.Parameter(torch.randn(1, 6, 4, 4))
        self.layer_scale = nn.Parameter(torch.rand(6, 1, 1) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x) + self.pos
        return self.skip(x) + self.layer_scale * y


def test_vit_class_token_and_position_embedding_are_learned_constants() -> None:
    torch.manual_seed(0)
    model = PatchViT().eval()
    types = round_trips(model, (3, 8, 8))
    assert types.count("LearnedConstant") == 1  # the class token
    assert "PositionalEncoding" in types  # [1, T, E] added to [B, T, E]: the learned table
    assert types.count("TransformerEncoderLayer") == 2 and "Chunk" in types


def test_layer_scale_and_a_parameter_added_to_a_feature_map_are_learned_constants() -> None:
    torch.manual_seed(0)
    model = LayerScaleBlock().eval()
    result = import_model(model, (3, 4, 4))
    assert result.graph is not None, [str(p) for p in result.problems]
    constants = [n.params["shape"] for n in result.graph.nodes if n.type == "LearnedConstant"]
    assert sorted(constants) == [[6, 1, 1], [6, 4, 4]]
    round_trips(model, (3, 4, 4))


def test_a_parameter_used_other_than_as_itself_is_refused_by_name() -> None:
    class Doubled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Parameter(torch.randn(4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * (self.table * 2)

    result = import_model(Doubled(), (3, 4))
    assert result.graph is None and "self.table" in str(result.problems[0])


# ---------------------------------------------------------------------------------------------
# Sequence-first code: the word language model example


class RNNModel(nn.Module):
    """examples/word_language_model/model.py's RNNModel, fed batch-first token ids [B, T] and
    transposing them itself (`input.t()`, the example's batchify layout) around an RNN without
    batch_first, then back (`.transpose(0, 1)`)."""

    def __init__(self, rnn_type: str, ntoken: int, ninp: int, nhid: int, nlayers: int) -> None:
        super().__init__()
        self.ntoken = ntoken
        self.drop = nn.Dropout(0.2)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = getattr(nn, rnn_type)(ninp, nhid, nlayers, dropout=0.2)
        self.decoder = nn.Linear(nhid, ntoken)

    def forward(self, input: torch.Tensor, hidden: torch.Tensor | None = None) -> tuple:
        emb = self.drop(self.encoder(input.t()))
        output, hidden = self.rnn(emb, hidden)
        output = self.drop(output)
        decoded = self.decoder(output)
        return F.log_softmax(decoded, dim=-1).transpose(0, 1), hidden


class TransformerModel(nn.Module):
    """The example's TransformerModel around nn.TransformerEncoder without batch_first (its
    sequence-first position table left out: a learned PositionalEncoding would be batch-first)."""

    def __init__(self, ntoken: int, ninp: int, nhead: int, nhid: int, nlayers: int) -> None:
        super().__init__()
        encoder_layers = nn.TransformerEncoderLayer(ninp, nhead, nhid, 0.0)
        self.transformer_encoder = nn.TransformerEncoder(
            encoder_layers, nlayers, enable_nested_tensor=False
        )
        self.encoder = nn.Embedding(ntoken, ninp)
        self.ninp = ninp
        self.decoder = nn.Linear(ninp, ntoken)

    def forward(self, src: torch.Tensor) -> torch.Tensor:
        src = src.transpose(0, 1)
        src = self.encoder(src) * math.sqrt(self.ninp)
        output = self.transformer_encoder(src)
        output = self.decoder(output)
        return F.log_softmax(output, dim=-1).transpose(0, 1)


@pytest.mark.parametrize("rnn_type", ["LSTM", "GRU"])
def test_word_language_model_sequence_first_rnn_imports_batch_first(rnn_type: str) -> None:
    torch.manual_seed(0)
    model = RNNModel(rnn_type, 11, 6, 8, 2).eval()
    types = round_trips(model, (7,), "int64")
    assert types == ["Input", "Embedding", "Dropout", rnn_type, "Dropout", "Linear", "LogSoftmax",
                     "Output"]  # fmt: skip
    graph = import_model(model, (7,), "int64").graph
    assert analyse(graph).infos["rnn"].shape == (7, 8)


def test_sequence_first_transformer_encoder_stack_imports() -> None:
    torch.manual_seed(0)
    model = TransformerModel(11, 8, 2, 16, 2).eval()
    types = round_trips(model, (5,), "int64")
    assert types.count("TransformerEncoderLayer") == 2 and "Permute" not in types


def test_a_sequence_first_tensor_returned_or_pooled_is_refused_with_a_sentence() -> None:
    class Forgets(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.gru(x.transpose(0, 1))[0]

    result = import_model(Forgets(), (6, 4))
    assert result.graph is None
    assert "transpose it back to batch-first" in str(result.problems[0])


def test_the_last_step_of_a_sequence_first_output_is_a_sequence_pool() -> None:
    class LastStep(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(4, 6)
            self.fc = nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            output, _ = self.gru(x.transpose(0, 1))
            return self.fc(output[-1])

    torch.manual_seed(0)
    assert round_trips(LastStep().eval(), (6, 4)) == ["Input", "GRU", "SequencePool", "Linear",
                                                     "Output"]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# A VAE: the reparameterisation as a Reparameterize layer


class VAE(nn.Module):
    """examples/vae/main.py's VAE (784 -> 400 -> 20 shrunk to 16 -> 8 -> 3)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 8)
        self.fc21 = nn.Linear(8, 3)
        self.fc22 = nn.Linear(8, 3)
        self.fc3 = nn.Linear(3, 8)
        self.fc4 = nn.Linear(8, 16)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x.view(-1, 16))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def example_vae_loss(recon_x, x, mu, logvar) -> torch.Tensor:  # noqa: ANN001 - the example's
    """examples/vae/main.py's loss_function: reconstruction + KL divergence, summed."""
    BCE = F.binary_cross_entropy(recon_x, x.view(-1, 16), reduction="sum")
    KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return BCE + KLD


def test_vae_reparameterisation_is_a_sampling_layer_and_its_loss_the_examples() -> None:
    from runtime.loop import compute_loss  # the loss training and train.py use

    torch.manual_seed(0)
    model = VAE().eval()
    result = import_model(model, (1, 4, 4))
    assert result.graph is not None, [str(p) for p in result.problems]
    types = [node.type for node in result.graph.nodes]
    assert types.count("Reparameterize") == 1 and "Exp" not in types
    twin = exported_twin(model, result)
    x = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        recon, mu, logvar = model(x)
        torch.manual_seed(1)
        out = twin(x)
        torch.testing.assert_close(out, recon)  # the same noise drawn, the same sample
        expected = example_vae_loss(recon, x, mu, logvar) / len(x)
        torch.testing.assert_close(compute_loss("vae", out, x, model=twin), expected)


def new_vae() -> nn.Module:
    """A VAE designed in NetBuilder: 6 -> mu, logvar (2 each) -> Reparameterize -> 6, Sigmoid."""
    graph = {
        "format": "netbuilder.graph/1",
        "name": "vae",
        "nodes": [
            {"id": "x", "type": "Input", "params": {"shape": [6]}},
            {"id": "mu", "type": "Linear", "params": {"out_features": 2}},
            {"id": "logvar", "type": "Linear", "params": {"out_features": 2}},
            {"id": "z", "type": "Reparameterize", "params": {}},
            {"id": "dec", "type": "Linear", "params": {"out_features": 6}},
            {"id": "p", "type": "Sigmoid", "params": {}},
            {"id": "out", "type": "Output", "params": {"loss": "vae"}},
        ],
        "edges": [
            {"source": "x", "target": "mu"},
            {"source": "x", "target": "logvar"},
            {"source": "mu", "target": "z", "port": 0},
            {"source": "logvar", "target": "z", "port": 1},
            {"source": "z", "target": "dec"},
            {"source": "dec", "target": "p"},
            {"source": "p", "target": "out"},
        ],
    }
    from builder.graph import parse_graph
    from compiler import generate_source
    from tests.modelkit import load_module

    analysis = analyse(parse_graph(graph))
    assert analysis.ok, analysis.errors
    return load_module(generate_source(analysis)).build_model()


def test_a_new_vae_samples_in_training_and_gives_the_mean_in_eval() -> None:
    model = new_vae()
    x = torch.rand(5, 6)
    assert not torch.equal(model.train()(x), model(x))  # a fresh sample each call
    assert torch.equal(model.eval()(x), model(x))


def test_the_training_loop_trains_a_vae_on_its_own_inputs() -> None:
    """runtime/loop.py (also train.py's loop) with the loss vae: the target is the input, the
    labels go unused, and the KL term comes from the Reparameterize layer."""
    from runtime import loop
    from runtime.settings import TrainConfig

    torch.manual_seed(0)
    model = new_vae()
    config = TrainConfig(epochs=12, batch_size=16, optimizer="adam", lr=0.01)
    generator = torch.Generator().manual_seed(2)
    codes = torch.rand(96, 2, generator=generator)
    x = torch.sigmoid(codes @ torch.randn(2, 6, generator=generator) * 3)  # in [0, 1]
    labels = torch.zeros(96, dtype=torch.int64)
    optimizer = loop.make_optimizer(config, list(model.parameters()))
    records: list[dict] = []

    class Records(loop.Hooks):
        def after_epoch(self, record: dict, progress: loop.Progress) -> None:
            records.append(record)

    trainer = loop.Loop(model, optimizer, loop.split(x, labels, config), config, "vae",
                        hooks=Records())  # fmt: skip
    trainer.train()
    first, last = records[0]["train_loss"], records[-1]["train_loss"]
    assert math.isfinite(last) and last < 0.9 * first
    with torch.no_grad():  # the recorded loss is the example's: BCE + KL, per sample
        model.eval()
        val = trainer.data.x_val
        out = model(val)
        kl = model.z.kl
        expected = (F.binary_cross_entropy(out, val, reduction="sum") + kl) / len(val)
    assert records[-1]["val_loss"] == pytest.approx(float(expected), rel=1e-4)


# ---------------------------------------------------------------------------------------------
# timm: four small models, built without weights (pretrained=False), round-trip


TIMM_MODELS = {
    "resnet10t": {},
    "convnext_atto": {},
    "mobilenetv3_small_050": {},
    "regnetx_002": {},
    "vit_tiny_patch16_224": {"img_size": 32},  # 4 patches and the class token
}


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_models_round_trip(name: str) -> None:
    import timm  # requirements-dev.txt; after conftest declared torchvision's ops

    torch.manual_seed(0)
    options = {"pretrained": False, "num_classes": 5, **TIMM_MODELS[name]}
    model = trained_statistics(timm.create_model(name, **options))
    types = round_trips(model, (3, 32, 32))
    if name == "vit_tiny_patch16_224":  # timm's Attention (qkv, F.scaled_dot_product_attention)
        assert types.count("MultiheadAttention") == 12 and "LearnedConstant" in types
    if name == "convnext_atto":  # LayerNorm2d, and the layer scale x.mul(self.gamma.reshape(...))
        assert "LearnedConstant" in types and "LayerNorm" in types
    if name == "mobilenetv3_small_050":  # BatchNormAct2d and timm's Linear (F.linear)
        assert "BatchNorm2d" in types and "Linear" in types


def test_torchvision_vision_transformer_round_trips() -> None:
    """torchvision's VisionTransformer (vit_b_16's code, a small config): its class token
    (torch.cat of an expanded Parameter), position embedding and x[:, 0]."""
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(16, 8, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16,
                              num_classes=5).eval()  # fmt: skip
    types = round_trips(model, (3, 16, 16))
    assert types.count("LearnedConstant") == 1 and "MultiheadAttention" in types


# ---------------------------------------------------------------------------------------------
# Python's slices of a tensor: x[:, 1:], x[..., ::2]


class EveryOtherColumn(nn.Module):
    """A space-to-depth written with slices (YOLOv5's Focus), then a convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(12, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        quarters = [x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]]
        return self.conv(torch.cat(quarters, 1))


class DropTheFirstToken(nn.Module):
    """The tokens after a class token (x[:, 1:]), a window of features (x[:, :, 2:-2]) and the
    first half of the channels (x[:, :4])."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x[:, 1:][:, :, 2:-2][:, :4].mean(1))


@pytest.mark.parametrize(
    ("model", "shape", "slices"),
    [(EveryOtherColumn, (3, 8, 10), 8), (DropTheFirstToken, (6, 16), 3)],
)
def test_slices_of_a_tensor_are_slice_layers(model: type, shape: tuple, slices: int) -> None:
    torch.manual_seed(0)
    types = round_trips(model().eval(), shape)
    assert types.count("Slice") == slices


@pytest.mark.parametrize(
    ("index", "said"),
    [
        (lambda x: x[1:], "indexing with"),  # the batch dim
        (lambda x: x[:, torch.tensor([0, 2])], "indexing with"),  # by a tensor of positions
    ],
)
def test_a_slice_of_the_batch_or_by_a_tensor_is_refused_with_a_sentence(
    index: Callable[[torch.Tensor], torch.Tensor], said: str
) -> None:
    class Indexed(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return index(x)

    result = import_model(Indexed(), (4, 5), "float32")
    assert result.graph is None
    assert any(said in str(problem) for problem in result.problems), result.problems
