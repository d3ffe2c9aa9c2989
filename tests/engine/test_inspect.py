"""`inspect --json` against ΔW built directly from the safetensors files with numpy (a full SVD of the dense
update; the inspector never forms one): LoRA, rsLoRA, a QLoRA run trained by the real worker, DoRA against
PEFT's own merge, and subspace similarity."""
import json

import numpy as np
import pytest

from helpers import cli, train_by_hand
from lora_core import models
from lora_core.adapters import inspect_adapter, similarity
from lora_core.config import ExperimentConfig
from lora_core.runs import RunStatus

pytestmark = pytest.mark.timeout(400)

TEXTS, LABELS = ["a wonderful film", "dull and slow", "great acting", "the worst"], [1, 0, 1, 0]


def minilm_cfg(**lora) -> ExperimentConfig:
    return ExperimentConfig.from_dict({"name": "inspect", "model": {"source": "minilm"},
                                       "lora": {"r": 8, "alpha": 16, **lora}})


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """Adapters after a few real AdamW steps: {kind: (config, folder)}."""
    out = {}
    for kind, cfg in {"lora": minilm_cfg(), "rslora": minilm_cfg(r=16, use_rslora=True)}.items():
        model, _ = train_by_hand(cfg, TEXTS, LABELS, steps=3)
        folder = tmp_path_factory.mktemp(kind)
        model.save_pretrained(folder)
        out[kind] = (cfg, folder)
    return out


def tensors(path):
    from safetensors.torch import load_file

    return {k: v.double().numpy() for k, v in load_file(str(path)).items()}


def base_tensor(base: dict, module: str) -> np.ndarray:
    """The base weight of a module, found by hand: MiniLM's file saves the encoder without the `bert.` prefix."""
    key = module.removeprefix("bert.") + ".weight"
    return base[key]


def check_against_numpy(report: dict, folder, cfg: ExperimentConfig):
    saved = tensors(folder / "adapter_model.safetensors")
    base = tensors(models.resolve_source(cfg.model.source) + "/model.safetensors")
    names = {k.removeprefix("base_model.model.").removesuffix(".lora_A.weight") for k in saved if "lora_A" in k}
    assert {m["name"] for m in report["modules"]} == names
    r = cfg.lora.r
    scale = cfg.lora.alpha / (np.sqrt(r) if cfg.lora.use_rslora else r)
    for m in report["modules"]:
        stem = "base_model.model." + m["name"]
        delta = scale * saved[stem + ".lora_B.weight"] @ saved[stem + ".lora_A.weight"]
        full = np.linalg.svd(delta, compute_uv=False)
        s = np.array(m["singular_values"])
        assert len(s) == r and np.all(np.diff(s) <= 0), "descending, one per rank"
        np.testing.assert_allclose(s, full[:r], rtol=1e-4, atol=1e-9 * full[0])
        assert m["delta_norm"] == pytest.approx(np.linalg.norm(delta), rel=1e-5)
        assert m["relative_norm"] == pytest.approx(np.linalg.norm(delta) / np.linalg.norm(
            base_tensor(base, m["name"])), rel=1e-5)
        energy = np.cumsum(full ** 2) / np.sum(full ** 2)
        assert m["effective_rank"] == int(np.argmax(energy >= 0.9 - 1e-12)) + 1
        assert m["scaling"] == pytest.approx(scale)
        assert m["shape"] == [384, 384] and m["layer"] in range(6) and m["module"] in ("query", "value")


@pytest.mark.parametrize("kind", ["lora", "rslora"])
def test_inspect_json_matches_numpy(adapters, kind):
    cfg, folder = adapters[kind]
    report = json.loads(cli("inspect", str(folder), "--base", "minilm", "--json").stdout)
    check_against_numpy(report, folder, cfg)
    assert report["r"] == cfg.lora.r and report["use_rslora"] is cfg.lora.use_rslora
    assert report["also_saved"] == ["classifier.bias", "classifier.weight"]
    assert report["advice"]["text"].startswith(f"r={cfg.lora.r} used an effective rank of at most")
    assert report["summary"]["modules"] == 12


def test_qlora_run_inspected_by_id(runs, runs_dir):
    cfg = minilm_cfg(r=4).replace(**{
        "method": "qlora", "name": "qlora-inspect", "data.max_train_samples": 32, "data.max_eval_samples": 8,
        "data.max_length": 24, "train.max_steps": 3, "train.batch_size": 8, "train.learning_rate": 0.02})
    run_id = runs.launch(cfg)
    record = runs.wait(run_id, timeout=300)
    assert record.status == RunStatus.SUCCEEDED, (record.error, record.error_log)
    report = json.loads(cli("inspect", run_id[:-3], "--json", "--runs-dir", str(runs_dir)).stdout)
    assert report["run_id"] == run_id and report["method"] == "qlora"
    # relative to the full-precision base the 4-bit weights were quantized from
    assert "base weights from" in report["base_note"]
    check_against_numpy(report, runs.dir(run_id).artifacts.adapter, cfg)
    text = cli("inspect", run_id, "--runs-dir", str(runs_dir)).stdout
    assert "Advice: r=4 used an effective rank" in text and "Rule: Effective rank of a module" in text


def test_dora_update_is_what_peft_merges(tmp_path):
    cfg = ExperimentConfig.from_dict({"name": "dora", "model": {"source": "tiny-random-gpt2"},
                                      "lora": {"r": 4, "use_dora": True}})
    model, _ = train_by_hand(cfg, TEXTS, LABELS, steps=3)
    model.save_pretrained(tmp_path)
    base = {n.replace(".base_layer", ""): p.detach().double().numpy() for n, p in model.named_parameters()}
    merged = {n: p.detach().double().numpy() for n, p in model.merge_and_unload().named_parameters()}
    report = inspect_adapter(tmp_path, base="tiny-random-gpt2")
    assert report.use_dora and len(report.modules) == 2
    for m in report.modules:
        key = m.name + ".weight"
        delta = merged[key] - base["base_model.model." + key]
        assert m.delta_norm == pytest.approx(np.linalg.norm(delta), rel=1e-5)
        assert m.relative_norm == pytest.approx(np.linalg.norm(delta) / np.linalg.norm(merged[key] - delta), rel=1e-5)
        assert m.magnitude_norm is not None and len(m.singular_values) == 4


def test_subspace_similarity_of_two_adapters(adapters):
    (_, lora), (_, rs) = adapters["lora"], adapters["rslora"]
    first, second = inspect_adapter(lora, base="minilm"), inspect_adapter(rs, base="minilm")
    sims = similarity(first, second)
    assert [s.name for s in sims] == [m.name for m in first.modules]
    one = sims[0]
    assert one.phi.shape == (8, 16) and 0 <= one.phi.min() and one.phi.max() <= 1 + 1e-9
    U1 = np.linalg.svd(first.modules[0].A, full_matrices=False)[2].T
    U2 = np.linalg.svd(second.modules[0].A, full_matrices=False)[2].T
    assert one.overlap == pytest.approx(np.linalg.norm(U1.T @ U2) ** 2 / 8, rel=1e-6)
    assert one.random_overlap == pytest.approx(16 / 384)
    itself = similarity(first, first, basis="delta")[0].phi
    np.testing.assert_allclose(np.diag(itself), 1.0, atol=1e-9)
    out = json.loads(cli("inspect", str(lora), "--base", "minilm", "--against", str(rs), "--json").stdout)
    assert out["similarity"]["r1"] == 8 and out["similarity"]["r2"] == 16
    assert np.array(out["similarity"]["modules"][0]["phi"]).shape == (8, 16)


def test_inspect_refuses_what_has_no_adapter(runs, runs_dir, tmp_path):
    bad = cli("inspect", str(tmp_path), "--base", "minilm", check=False)
    assert bad.returncode == 2 and "has no adapter_config.json" in bad.stderr
    unknown = cli("inspect", "no-such-run", "--runs-dir", str(runs_dir), check=False)
    assert unknown.returncode == 2 and "unknown run id" in unknown.stderr
    full = runs.create(ExperimentConfig.from_dict({"name": "full", "method": "full"}))
    runs.cancel(full.id)
    refused = cli("inspect", full.id, "--runs-dir", str(runs_dir), check=False)
    assert refused.returncode == 2 and "only lora and qlora runs" in refused.stderr
