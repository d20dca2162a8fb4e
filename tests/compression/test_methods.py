"""Every compression method (conf/recipe) through the training app, from one pretrained model."""

import math

import pytest
import torch

from cnncomp.config import CONF_DIR
from cnncomp.train import train

RECIPES = sorted(p.stem for p in (CONF_DIR / "recipe").glob("*.yaml"))
LABELS = {
    "dense": ("none", None),
    "lowpass": ("dct", "block"),
    "zonal": ("dct", "triangle"),
    "dct_magnitude": ("dct", "magnitude"),
    "pruning": ("identity", "magnitude"),
    "deep_compression": ("identity", "magnitude"),
    "sparse_vd": ("identity", "sparse_vd"),
    "sparse_vd_dct": ("dct", "sparse_vd"),
    "lowrank": ("identity", "lowrank"),
    "frequency": ("dct", "frequency"),
    "epr": ("dct", "epr"),
    "vae": ("identity", "vae"),
}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, make_cfg, quick):
    run = tmp_path_factory.mktemp("pretrained")
    result = train(make_cfg(quick + ["kernel=none", "trainer.max_epochs=2"]), run)
    assert result["status"] == "completed"
    return run / "model.pt"


def test_every_recipe_is_labelled():
    assert set(RECIPES) == set(LABELS)


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_fine_tunes_a_pretrained_model_and_records_what_it_stores(
    recipe, pretrained, tmp_path, make_cfg, quick
):
    stages = ["trainer.max_epochs=2", "codec.finetune_epochs=1"] if recipe == "deep_compression" else []
    cfg = make_cfg(quick + [f"recipe={recipe}", f"model.pretrained={pretrained}", "kernel.keep=0.1", *stages])
    result = train(cfg, tmp_path)
    assert result["status"] == "completed", result["error"]
    assert (result["kernel"], result["selection"]) == LABELS[recipe]
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert result["stored_params"] == sum(t.numel() for t in state.values() if t.is_floating_point())
    masks = [t for t in state.values() if t.dtype == torch.bool]
    bits = sum(min(m.numel(), int(m.sum()) * math.ceil(math.log2(m.numel()))) for m in masks)
    assert result["index_bits"] == bits
    assert result["compression_ratio_with_index"] == pytest.approx(
        result["dense_params"] / (result["stored_params"] + bits / 32)
    )
    if recipe == "deep_compression":  # the kept weights hold at most 2^5 codebook values per layer
        values = [t for k, t in state.items() if k.endswith("original")]
        assert values and all(t.unique().numel() <= 32 for t in values)
    if recipe == "dense":
        assert result["compression_ratio"] == 1.0
    elif recipe == "epr":  # every latent is stored, as an integer coded under the learned prior: fewer bytes
        assert result["stored_params"] > result["dense_params"]
        assert result["file_ratio"] > 3.0
    else:
        assert result["compression_ratio"] > 3.0
