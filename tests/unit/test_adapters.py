"""The adapter inspector's arithmetic on synthetic matrices (numpy is the reference): singular values through QR
match a full SVD, effective rank, subspace similarity, the rank advice and its rule, and the torch-free
safetensors reader (bf16 included) with its suffix lookup of base weights."""
import json
import struct

import numpy as np
import pytest

from lora_core.adapters import spectrum
from lora_core.adapters.advice import next_power_of_two, rank_advice
from lora_core.adapters.report import AdapterReport, ModuleUpdate, module_alpha, scaling, short_names
from lora_core.adapters.tensors import BaseWeights, SafetensorsFile
from lora_core.errors import ModelError


@pytest.mark.parametrize("d_out,d_in,r", [(48, 32, 4), (32, 48, 8), (6, 40, 8)])
def test_lowrank_svd_matches_full_svd(d_out, d_in, r):
    rng = np.random.default_rng(0)
    B, A = rng.normal(size=(d_out, r)), rng.normal(size=(r, d_in))
    svd = spectrum.lowrank_svd(B, A, scale=2.5)
    delta = 2.5 * B @ A
    full = np.linalg.svd(delta, compute_uv=False)
    assert np.all(np.diff(svd.s) <= 0)
    np.testing.assert_allclose(svd.s, full[:len(svd.s)], rtol=1e-10)
    np.testing.assert_allclose((svd.U * svd.s) @ svd.V.T, delta, atol=1e-10)
    assert svd.frobenius == pytest.approx(np.linalg.norm(delta))


def test_effective_rank():
    assert spectrum.effective_rank(np.array([3.0, 0.0, 0.0])) == 1
    assert spectrum.effective_rank(np.array([0.0, 0.0])) == 0
    # 90% of 1 + 1 + 1 + 1 + 0 (squares): three of four equal directions hold 75%, four hold 100%
    assert spectrum.effective_rank(np.ones(4)) == 4
    s = np.sqrt(np.array([81.0, 9.0, 10.0]))  # 81% then 90%: exactly 90% counts as reached
    assert spectrum.effective_rank(np.sort(s)[::-1]) == 2
    assert spectrum.effective_rank(np.ones(10), energy=0.5) == 5


def test_subspace_similarity():
    rng = np.random.default_rng(1)
    A = rng.normal(size=(8, 64))
    U = spectrum.right_basis(A)
    same = spectrum.subspace_similarity(U, U)
    np.testing.assert_allclose(np.diag(same), 1.0, atol=1e-12)
    assert same.shape == (8, 8) and np.all(same <= 1 + 1e-12) and np.all(same >= 0)
    # a subspace inside a larger one: the smaller one is contained wholly
    big = spectrum.right_basis(np.vstack([A[:4], rng.normal(size=(12, 64))]))
    small = spectrum.right_basis(A[:4])
    assert spectrum.subspace_similarity(small, big)[-1, -1] == pytest.approx(1.0)
    # orthogonal subspaces share nothing
    eye = np.eye(64)
    assert spectrum.subspace_similarity(eye[:, :4], eye[:, 4:12]).max() == 0
    # the definition, element by element
    V = spectrum.right_basis(rng.normal(size=(5, 64)))
    phi = spectrum.subspace_similarity(U, V)
    i, j = 3, 4
    assert phi[i - 1, j - 1] == pytest.approx(np.linalg.norm(U[:, :i].T @ V[:, :j]) ** 2 / min(i, j))


def module(name, values, r=64):
    s = np.zeros(r)
    s[:len(values)] = values
    return ModuleUpdate(name, 0, name, (8, 8), r, 1.0, float(np.linalg.norm(s)), list(s), spectrum.effective_rank(s))


def report(spectra, r=64):
    mods = [module(f"layer.{i}.query", values, r) for i, values in enumerate(spectra)]
    return AdapterReport("x", "minilm", r, 16, False, False, 0.9, mods, [], "")


def test_rank_advice_pools_the_modules_and_states_its_rule():
    strong = [10.0] * 5 + [1.0] * 10      # five strong directions
    weak = [0.01] * 30                    # a barely trained module: flat, but tiny
    advice = rank_advice(report([strong] * 22 + [weak] * 2))
    assert advice.k == 5 and advice.advised_r == 8 and advice.within == 22 and advice.modules == 24
    assert advice.text.startswith("r=64 used an effective rank of at most 5 in 22 of 24 modules, and the top 5 "
                                  "directions hold 9")
    assert advice.text.endswith(": r=8 is likely enough")
    assert "90%" in advice.rule and "power of two" in advice.rule and "total ‖ΔW‖²_F" in advice.rule
    full = rank_advice(report([[1.0] * 8] * 3, r=8))
    assert full.advised_r is None and full.k == 8 and "a larger r may help" in full.text
    assert rank_advice(report([[1.0]], r=8)).advised_r == 1
    # one dominant module holds 90% of the update alone, but three in four modules use 3 directions: r=4
    dominant, spread = [30.0], [1.0, 1.0, 1.0]
    mixed = rank_advice(report([dominant] + [spread] * 7))
    assert mixed.advised_r == 4 and mixed.k == 3 and mixed.within == 8
    assert "75% of the modules" in mixed.rule
    assert [next_power_of_two(k) for k in (0, 1, 2, 3, 5, 8, 9)] == [1, 1, 2, 4, 8, 8, 16]


def test_scaling_follows_peft():
    config = {"lora_alpha": 16, "r": 8, "alpha_pattern": {"value": 4}}
    assert scaling(config, "bert.encoder.layer.0.attention.self.query", 8) == 2.0
    assert module_alpha(config, "bert.encoder.layer.0.attention.self.value") == 4
    assert scaling({**config, "use_rslora": True}, "x.query", 16) == 4.0  # alpha / sqrt(r)


def test_short_names_stay_unique():
    paths = ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.output.dense",
             "bert.encoder.layer.0.output.dense", "bert.encoder.layer.1.attention.self.query"]
    names = short_names(paths)
    assert names[paths[0]] == names[paths[3]] == "query"
    assert names[paths[1]] == "attention.output.dense" and names[paths[2]] == "output.dense"


def write_safetensors(path, tensors: dict[str, tuple[str, np.ndarray]]):
    """A safetensors file written by hand: {name: (dtype, array)}; BF16 is given as the float32 to truncate."""
    header, blobs, offset = {}, [], 0
    for name, (dtype, array) in tensors.items():
        if dtype == "BF16":
            raw = (np.asarray(array, np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes()
        else:
            raw = np.asarray(array, {"F32": np.float32, "F16": np.float16}[dtype]).tobytes()
        header[name] = {"dtype": dtype, "shape": list(np.shape(array)), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def test_safetensors_reader_and_base_lookup(tmp_path):
    w = np.arange(12, dtype=np.float32).reshape(3, 4) / 4  # exact in bf16
    write_safetensors(tmp_path / "model.safetensors", {
        "encoder.layer.0.attention.self.query.weight": ("BF16", w),
        "encoder.layer.1.attention.self.query.weight": ("F32", w + 1),
        "encoder.layer.0.attention.self.query.bias": ("F16", np.ones(3)),
    })
    f = SafetensorsFile(tmp_path / "model.safetensors")
    np.testing.assert_array_equal(f.get("encoder.layer.0.attention.self.query.weight"), w)
    assert f.get("encoder.layer.0.attention.self.query.bias").dtype == np.float16
    base = BaseWeights.from_folder(tmp_path)
    # the task model's path has a prefix ("bert.") the saved encoder does not
    np.testing.assert_array_equal(base.weight("bert.encoder.layer.1.attention.self.query"), w + 1)
    assert base.find("bert.encoder.layer.7.attention.self.query") is None
    (tmp_path / "bad.safetensors").write_bytes(b"nope")
    with pytest.raises(ModelError, match="not a readable safetensors file"):
        SafetensorsFile(tmp_path / "bad.safetensors")
    with pytest.raises(ModelError, match="no .safetensors weights"):
        BaseWeights.from_folder(tmp_path / "missing")
