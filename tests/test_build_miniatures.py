"""Every supported architecture, on its miniature: the fp32 package computes what torch computes."""

import json
from pathlib import Path

import numpy as np
import pytest

from phiexport.evaluate.onnx_runner import PackageRunner
from phiexport.evaluate.reference import TorchReference
from phiexport.pipeline import build
from phiexport.recipe import recipe_for_source
from tests.conftest import run_cli
from tests.hub_cache import make_hub_cache
from tests.miniatures import MINIATURES

FAST_CHECK = {"sequences": 4, "greedy_prompts": 1, "greedy_tokens": 8}


def build_fp32(model_dir: Path, output: Path) -> Path:
    recipe = recipe_for_source(str(model_dir)).with_overrides(
        {"quantization": {"precision": "fp32"}, "evaluation": FAST_CHECK}
    )
    return build(recipe, output).packages["cpu"]


def max_logit_error(package: Path, model_dir: Path, token_ids: list[int]) -> tuple[float, np.ndarray]:
    reference = TorchReference(model_dir).logits(token_ids)
    return float(np.abs(PackageRunner(package).logits(token_ids) - reference).max()), reference


@pytest.mark.parametrize("model_type", sorted(MINIATURES))
def test_fp32_package_matches_torch(model_type, miniature_dirs, tmp_path):
    model_dir = miniature_dirs[model_type]
    package = build_fp32(model_dir, tmp_path / "out")
    token_ids = np.random.default_rng(0).integers(10, 2000, size=150).tolist()
    error, _ = max_logit_error(package, model_dir, token_ids)
    assert error < 1e-4
    report = json.loads((package / "report.json").read_text())
    assert report["metrics"]["kl_mean"] < 1e-8 and report["metrics"]["top1_agreement"] == 1.0


def test_phi4_mini_long_rope_factors_match_torch_past_the_original_context(mini_phi4, tmp_path):
    package = build_fp32(mini_phi4, tmp_path / "out")
    config = json.loads((mini_phi4 / "config.json").read_text())
    original = config["original_max_position_embeddings"]
    token_ids = np.random.default_rng(1).integers(10, 2000, size=3 * original).tolist()

    short_error, short_reference = max_logit_error(package, mini_phi4, token_ids[: original - 4])
    long_error, long_reference = max_logit_error(package, mini_phi4, token_ids)
    assert short_error < 1e-4
    assert long_error < 1e-4
    # The same prefix scores differently once the sequence passes the original context: the long factors are in use.
    prefix_shift = np.abs(long_reference[: original - 4] - short_reference).max()
    assert prefix_shift > 1e-2


def test_phi4_mini_config_saved_by_transformers5_builds(mini_phi4_transformers5, tmp_path):
    config = json.loads((mini_phi4_transformers5 / "config.json").read_text())
    assert "type" not in config["rope_parameters"]  # the builder alone fails on this with KeyError: 'type'
    package = build_fp32(mini_phi4_transformers5, tmp_path / "out")
    token_ids = np.random.default_rng(2).integers(10, 2000, size=100).tolist()
    assert max_logit_error(package, mini_phi4_transformers5, token_ids)[0] < 1e-4


@pytest.mark.slow
def test_hub_id_builds_an_int4_package_offline(mini_phi4, tmp_path):
    commit = "5f1e0c0ffee0ddba11c0de5eed5a1ad5eab1e5ee"
    make_hub_cache(mini_phi4, tmp_path / "hub", "phiexport-test/mini-phi-4", commit)
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    output = tmp_path / "out"
    result = run_cli(
        "build",
        "phiexport-test/mini-phi-4",
        "--revision",
        "main",
        "-o",
        str(output),
        "--eval-sequences",
        "4",
        "--json",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((output / "cpu" / "manifest.json").read_text())
    assert manifest["source"] | {"files": None} == {
        "kind": "hub",
        "origin": "phiexport-test/mini-phi-4",
        "revision": commit,
        "architecture": "phi3",
        "files": None,
    }
    assert manifest["weights"]["bits"] == 4
    reply = run_cli("run", str(output / "cpu"), "hello", "--max-tokens", "8", "--json")
    assert reply.returncode == 0 and json.loads(reply.stdout)["new_tokens"] == 8

    missing = run_cli("build", "phiexport-test/mini-phi-4", "--revision", "v2", "-o", str(tmp_path / "o2"), env=env)
    assert missing.returncode == 3
    assert "HF_HUB_OFFLINE is set" in missing.stderr
    assert not (tmp_path / "o2").exists()


def test_rotated_fp32_package_still_matches_the_unrotated_model(mini_phi4, tmp_path):
    recipe = recipe_for_source(str(mini_phi4)).with_overrides(
        {"quantization": {"precision": "fp32", "rotate": True, "rotation_seed": 7}, "evaluation": FAST_CHECK}
    )
    package = build(recipe, tmp_path / "out").packages["cpu"]
    token_ids = np.random.default_rng(4).integers(10, 2000, size=150).tolist()
    assert max_logit_error(package, mini_phi4, token_ids)[0] < 1e-4  # against the original, unrotated checkpoint
    manifest = json.loads((package / "manifest.json").read_text())
    assert manifest["recipe"]["quantization"]["rotate"] is True
    assert manifest["source"]["files"]["model.safetensors"]["sha256"]  # the source, not the rotated copy
