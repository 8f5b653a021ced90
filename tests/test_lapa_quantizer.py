"""The latent action quantizer as modules: SDPA and naive attention agree, NSVQ passes gradients to
the encoder and the codebook, codebook upkeep revives dead codes the same way on every replica,
checkpoints round-trip, and bad configurations end in one clear message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lapa.codebook_upkeep import CodebookUpkeep
from lapa.config import CodebookGridError, CodebookUpkeepConfig, QuantizerConfig, load_quantizer_train_config
from lapa.nsvq import NoiseSubstitutionVQ, code_counts, perplexity, usage
from lapa.quantizer import LatentActionQuantizer, QuantizerCheckpointError

REPO = Path(__file__).resolve().parent.parent
ATTENTION = ("auto", "sdpa", "naive")
SMALL = {"image_size": 32, "patch_size": 8, "dim": 32, "heads": 2, "spatial_layers": 1, "temporal_layers": 1}


def frames(batch: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=generator)


def test_auto_sdpa_and_naive_attention_compute_the_same_quantizer():
    models = {name: LatentActionQuantizer(QuantizerConfig(**SMALL, attention=name)).eval() for name in ATTENTION}
    with torch.no_grad():  # a decoder that does something, so reconstructions are compared for real
        for model in models.values():
            model.load_state_dict(models["sdpa"].state_dict())
            model.to_pixels.weight.copy_(
                torch.linspace(-0.1, 0.1, model.to_pixels.weight.numel()).view_as(model.to_pixels.weight)
            )
    first, second = frames(4, seed=1), frames(4, seed=2)
    reference = models["sdpa"](first, second).reconstruction
    codes = models["sdpa"].encode_codes(first, second)
    assert codes.shape == (4, 4)
    for name in ("auto", "naive"):
        torch.testing.assert_close(models[name](first, second).reconstruction, reference, rtol=1e-4, atol=1e-5)
        assert torch.equal(models[name].encode_codes(first, second), codes)
    # auto: the two-frame temporal attention written out on CPU, the 16-patch spatial attention by SDPA
    auto = models["auto"]
    temporal, spatial = auto.temporal_blocks[0].self_attention, auto.spatial_blocks[0].self_attention
    two, sixteen = torch.zeros(1, 2, 2, 16), torch.zeros(1, 2, 16, 16)
    assert not temporal.uses_sdpa(two, two) and spatial.uses_sdpa(sixteen, sixteen)


def test_nsvq_trains_encoder_and_codebook_and_evaluates_to_the_nearest_codeword():
    vq = NoiseSubstitutionVQ(codebook_size=8, dim=4)
    z = torch.randn(16, 4, requires_grad=True)
    out = vq(z)
    out.vectors.pow(2).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    used = torch.unique(out.codes)
    assert vq.codebook.grad[used].abs().sum() > 0  # the codewords that were picked get a gradient
    assert not torch.allclose(out.vectors, vq.codebook[out.codes])  # noise-substituted, not the codeword

    vq.eval()
    with torch.no_grad():
        hard = vq(z)
    distances = torch.cdist(z.detach(), vq.codebook.detach())
    assert torch.equal(hard.codes, distances.argmin(dim=1))
    assert torch.equal(hard.vectors, vq.codebook[hard.codes])


def test_codebook_statistics():
    counts = code_counts(torch.tensor([[0, 1], [2, 3]]), 8)
    assert usage(counts) == 0.5
    assert perplexity(counts) == pytest.approx(4.0)
    assert perplexity(code_counts(torch.zeros(10, dtype=torch.long), 8)) == pytest.approx(1.0)


def test_upkeep_replaces_dead_codes_the_same_way_on_every_replica():
    upkeep = CodebookUpkeep(CodebookUpkeepConfig(every=10, dead_share=0.5, noise=0.05), codebook_size=8, seed=3)
    counts = torch.tensor([50.0, 40.0, 30.0, 0.0, 0.0, 20.0, 1.0, 19.0], dtype=torch.float64)
    latents = torch.randn(32, 4)
    latent_codes = torch.randint(0, 3, (32,))
    replicas = []
    for _ in range(2):  # two "processes" with the same synced inputs
        codebook = torch.nn.Parameter(torch.arange(32, dtype=torch.float32).view(8, 4))
        optimizer = torch.optim.Adam([codebook])
        codebook.grad = torch.ones_like(codebook)
        optimizer.step()
        replaced = upkeep.replace(codebook, optimizer, counts, latents, latent_codes, step=20)
        replicas.append((codebook.detach().clone(), optimizer.state[codebook]["exp_avg"].clone(), replaced))
    (first, moments, replaced), (second, _, _) = replicas
    assert replaced == 3  # codes 3, 4 (never used) and 6 (1 of 160 < 0.5 / 8)
    assert torch.equal(first, second)
    original = torch.arange(32, dtype=torch.float32).view(8, 4)
    dead = [3, 4, 6]
    live = [0, 1, 2, 5, 7]
    torch.testing.assert_close(first[live], original[live] - 0.001)  # one Adam step of lr 1e-3, then untouched
    for code in dead:  # each new codeword sits near an encoder output
        assert torch.cdist(first[code : code + 1], latents).min() < 0.5
    assert moments[dead].abs().sum() == 0 and moments[live].abs().sum() > 0


def test_checkpoint_round_trip_and_another_image_size_is_refused(tmp_path):
    model = LatentActionQuantizer(QuantizerConfig(**SMALL)).eval()
    model.save_pretrained(tmp_path / "ckpt")
    loaded = LatentActionQuantizer.from_pretrained(tmp_path / "ckpt")
    first, second = frames(3, seed=4), frames(3, seed=5)
    assert torch.equal(model.encode_codes(first, second), loaded.encode_codes(first, second))
    with pytest.raises(QuantizerCheckpointError, match="trained on 32 x 32 frames, not 64 x 64"):
        LatentActionQuantizer.from_pretrained(tmp_path / "ckpt", image_size=64)
    with pytest.raises(QuantizerCheckpointError, match="frames are 64 x 64 pixels but this quantizer takes 32"):
        loaded.encode_codes(frames(1, size=64), frames(1, size=64))


def test_a_codebook_that_cannot_tile_the_patch_grid_is_one_clear_message():
    with pytest.raises(
        CodebookGridError, match=r"num_codes=9 .* 8 x 8 patch grid .* use num_codes in \[1, 4, 16, 64\]"
    ):
        load_quantizer_train_config("lapa-tiny", ["quantizer.num_codes=9"])
    result = subprocess.run(
        [sys.executable, "-m", "magma.cli.app", "lapa", "train", "--config", "lapa-tiny", "quantizer.num_codes=3"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=1200,
    )
    assert result.returncode == 2
    assert "cannot tile" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_presets_build():
    openx = load_quantizer_train_config("lapa-openx").quantizer
    assert (openx.image_size, openx.patch_size, openx.dim, openx.heads) == (256, 32, 1024, 16)
    assert (openx.spatial_layers, openx.temporal_layers, openx.codebook_size, openx.num_codes) == (8, 8, 8, 4)
    tiny = LatentActionQuantizer(load_quantizer_train_config("lapa-tiny").quantizer)
    assert sum(p.numel() for p in tiny.parameters()) < 5_000_000


def test_temporal_attention_along_the_frame_axis_is_the_causal_attention_of_each_patch():
    from lapa.attention import Attention, naive_attention, two_frame_causal_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 5, 4, 8) for _ in range(3))  # (B, frames, patches, heads, d)
    per_patch = [t.permute(0, 2, 3, 1, 4) for t in (q, k, v)]  # (B, patches, heads, frames, d)
    expected = naive_attention(*per_patch, causal=True).permute(0, 3, 1, 2, 4)
    torch.testing.assert_close(two_frame_causal_attention(q[:, 1], k, v), expected)

    # a temporal block's attention on (B, frames, patches, dim) tokens, through every implementation,
    # against the same module on the patches' two-frame sequences (B * patches, frames, dim)
    reference = Attention(32, 4, "naive", causal=True)
    tokens = torch.randn(2, 2, 16, 32)
    sequences = tokens.transpose(1, 2).reshape(2 * 16, 2, 32).requires_grad_()
    expected = reference(sequences)
    expected.square().sum().backward()
    expected_grads = {name: p.grad for name, p in reference.named_parameters()}
    for implementation in ATTENTION:
        attention = Attention(32, 4, implementation, causal=True, over_frames=True)
        attention.load_state_dict(reference.state_dict())
        x = tokens.clone().requires_grad_()
        out = attention(x)
        torch.testing.assert_close(out.transpose(1, 2).reshape(2 * 16, 2, 32), expected, rtol=1e-5, atol=1e-6)
        out.square().sum().backward()
        grad = x.grad.transpose(1, 2).reshape(2 * 16, 2, 32)
        torch.testing.assert_close(grad, sequences.grad, rtol=1e-4, atol=1e-6)
        for name, parameter in attention.named_parameters():
            torch.testing.assert_close(parameter.grad, expected_grads[name], rtol=1e-4, atol=1e-6)
