"""The sparse-structure VAE decoder against the official logits (parity ss_decoder) and checkpoint manifest."""
from __future__ import annotations

import pytest
import torch

from engine.models.ss_decoder import PRESETS, SSDecoder, SSDecoderConfig, UpsampleBlock3d
from tests.engine.manifests import assert_matches_manifest, build_on_meta
from tests.engine.parity import assert_close, load_case


@pytest.fixture(scope="module")
def case():
    return load_case("ss_decoder")


@pytest.fixture(scope="module")
def official_model(case):
    model = SSDecoder(SSDecoderConfig(channels=(24, 16, 8))).eval()
    model.load_state_dict(case.params, strict=True)
    return model


@pytest.mark.parametrize("layout", ["shape_latent_tokens", "x"])
def test_matches_official_logits_from_tokens_and_from_grid(case, official_model, layout):
    with torch.no_grad():
        logits = official_model(case.inputs[layout])
    assert_close(logits, case.outputs["logits"], atol=1e-5, rtol=1e-5, what=f"logits from {layout}")


def test_official_preset_has_the_checkpoint_keys_and_shapes():
    assert_matches_manifest(build_on_meta(lambda: SSDecoder(PRESETS["official"])), "manifest_ss_decoder.json")


def test_pixel_shuffle_sends_channel_c8_plus_4i_2j_k_to_offset_ijk():
    gen = torch.Generator().manual_seed(21)
    block = UpsampleBlock3d(5, 3)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
        x = torch.randn(2, 5, 3, 4, 2, generator=gen)
        before = block.conv(x)  # (2, 24, 3, 4, 2)
        after = block(x)
    assert after.shape == (2, 3, 6, 8, 4)
    for c in range(3):
        for i in range(2):
            for j in range(2):
                for k in range(2):
                    got = after[:, c, i::2, j::2, k::2]
                    assert_close(got, before[:, c * 8 + 4 * i + 2 * j + k], 0, 0, f"c{c} offset {i}{j}{k}")


def test_batch_of_two_equals_two_single_calls():
    gen = torch.Generator().manual_seed(22)
    model = _random_model(SSDecoderConfig(channels=(6, 4, 4), resolution=4), gen).double()  # no rounding noise
    tokens = torch.randn(2, 64, 8, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        both = model(tokens)
        singles = torch.cat([model(tokens[:1]), model(tokens[1:])])
    assert both.shape == (2, 1, 16, 16, 16)
    assert_close(both, singles, 1e-10, 1e-10, "batched logits")


def test_float16_block_weights_run_with_float32_norms_and_io():
    gen = torch.Generator().manual_seed(23)
    model = _random_model(SSDecoderConfig(channels=(6, 4, 4), resolution=4), gen)
    grid = torch.randn(1, 8, 4, 4, 4, generator=gen)
    with torch.no_grad():
        reference = model(grid)
        model.middle_block.half()  # as the released file: block convs fp16, input/output layers fp32
        model.blocks.half()
        mixed = model(grid)
    assert mixed.dtype == torch.float32
    assert float((mixed - reference).norm() / reference.norm()) < 0.01


def test_rejects_a_token_count_that_is_not_the_latent_grid():
    model = SSDecoder(SSDecoderConfig(channels=(4, 4), resolution=4))
    with pytest.raises(ValueError, match="64 latent tokens"):
        model(torch.randn(1, 60, 8))


# ---- helpers


def _random_model(cfg: SSDecoderConfig, gen: torch.Generator) -> SSDecoder:
    model = SSDecoder(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5)
            elif "norm" in name or "out_layer.0" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return model
