"""Merge & export, Playground and QLoRA loader pages: each main action for real on tiny models."""
import pytest

from apptest_helpers import button, errors, no_exception, open_page, texts
from lora_core.config import ExperimentConfig
from lora_core.runs import Runs
from lora_ui.format import fmt_bytes

pytestmark = pytest.mark.timeout(300)


def metric(at, label):
    return next(m.value for m in at.metric if m.label == label)


# -- merge ------------------------------------------------------------------------------------------------------

def test_merge_and_verify(seeded_copy):
    record = next(r for r in Runs(seeded_copy).list()
                  if r.method == "lora" and r.lora_r == 4 and r.task == "seq-cls")
    at = open_page("merge")
    no_exception(at)
    at.selectbox(key="merge_run").set_value(record.id).run()
    assert any("Download adapter" in b.label for b in at.download_button)
    button(at, "merge_go").click().run()
    no_exception(at)
    assert not errors(at), errors(at)
    report = at.session_state[f"merge_report_{record.id}"]
    assert report["ok"] and report["lora_params_left"] == 0 and report["max_abs_diff"] < 1e-4
    assert any("Verified" in s.value for s in at.success)
    merged = Runs(seeded_copy).dir(record.id).artifacts.merged
    assert (merged / "config.json").is_file()
    assert any("merged model" in b.label for b in at.download_button)
    merged_tile = next(m.value for m in at.metric if m.label == "Merged model")
    assert merged_tile != "not merged yet"  # the status tile follows the merge (issue 9 item 9)
    # merging again replaces the folder instead of failing on it
    button(at, "merge_go").click().run()
    no_exception(at)
    assert not errors(at)


def test_push_offline_shows_why(use_seeded):
    record = next(r for r in Runs(use_seeded).list() if r.method == "lora" and r.task == "seq-cls")
    at = open_page("merge")
    at.selectbox(key="merge_run").set_value(record.id).run()
    assert button(at, "merge_push").disabled  # no repository id yet
    assert "Data fingerprint" in texts(at)  # the model card preview
    at.text_input(key="merge_repo").set_value("someone/tiny").run()
    button(at, "merge_push").click().run()
    no_exception(at)
    assert any("offline mode is on" in e for e in errors(at)), errors(at)


def test_full_run_has_nothing_to_merge(use_seeded):
    record = next(r for r in Runs(use_seeded).list() if r.method == "full")
    at = open_page("merge")
    at.selectbox(key="merge_run").set_value(record.id).run()
    no_exception(at)
    assert "no adapter to merge" in texts(at)
    assert not any(b.key == "merge_go" for b in at.button)


# -- playground -------------------------------------------------------------------------------------------------

def test_playground_classifies_with_base_and_tuned(use_seeded):
    record = next(r for r in Runs(use_seeded).list()
                  if r.method == "lora" and r.lora_r == 2 and r.task == "seq-cls")
    at = open_page("playground")
    at.multiselect(key="play_runs").set_value([record.id]).run()
    assert button(at, "play_go").disabled  # nothing loaded yet: no model loads on page render
    button(at, "play_load").click().run()
    no_exception(at)
    button(at, "play_go").click().run()
    no_exception(at)
    assert not errors(at)
    table = next(d.value for d in at.dataframe if "tuned confidence" in d.value.columns)
    assert len(table) == 3
    assert set(table["tuned"]) <= {"negative", "positive"} and set(table["base"]) <= {"negative", "positive"}
    assert ((table["tuned confidence"] >= 0.5) & (table["tuned confidence"] <= 1.0)).all()


def test_playground_generates(use_seeded):
    record = next(r for r in Runs(use_seeded).list() if r.name == "seed-gen")
    at = open_page("playground")
    at.multiselect(key="play_runs").set_value([record.id]).run()
    button(at, "play_load").click().run()
    at.number_input(key="play_tokens").set_value(3).run()
    button(at, "play_go").click().run()
    no_exception(at)
    table = next(d.value for d in at.dataframe if "prompt" in d.value.columns and "tuned" in d.value.columns)
    assert list(table["prompt"]) == list(ExperimentConfig().generate.prompts)  # the held-out default prompts
    # the answers recorded at training time, base beside tuned, and what changed
    assert "Before and after training" in texts(at) and "What changed:" in texts(at)


# -- QLoRA loader -----------------------------------------------------------------------------------------------

def test_qlora_load_attach_and_perplexity(runs_dir):
    at = open_page("qlora")
    no_exception(at)
    assert at.selectbox(key="qlora_model").value == "smollm2-135m-instruct"  # the real offline default
    at.selectbox(key="qlora_model").set_value("tiny-random-llama").run()  # a second to load, for the test
    assert not at.get("metric") or not any(m.label == "Quantization constants" for m in at.metric)
    button(at, "qlora_load").click().run()
    no_exception(at)
    assert not errors(at), errors(at)
    layer_types = next(d.value for d in at.dataframe if "layers" in d.value.columns)
    assert "Linear4bit" in set(layer_types["class"])
    loaded = at.session_state["qlora_loaded"]
    assert metric(at, "4-bit weights + constants") == fmt_bytes(loaded.after["exact_bytes"])
    assert metric(at, "fp32 weights") == fmt_bytes(loaded.before["exact_bytes"])
    assert loaded.after["exact_bytes"] < loaded.before["exact_bytes"]
    button(at, "qlora_attach").click().run()
    no_exception(at)
    assert int(metric(at, "4-bit layers with adapters")) > 0
    button(at, "qlora_ppl").click().run()
    no_exception(at)
    result = at.session_state["qlora_ppl_result"]
    assert metric(at, "ratio 4-bit / fp32") == f"{result['ratio']:.4f}"
    assert result["fp32"]["tokens"] > 0


def test_qlora_encoder_perplexity_is_an_error(runs_dir):
    at = open_page("qlora")
    at.selectbox(key="qlora_model").set_value("minilm").run()
    button(at, "qlora_ppl").click().run()
    no_exception(at)
    assert any("perplexity needs a causal LM" in e for e in errors(at))


def test_qlora_bad_model_is_an_error(runs_dir, tmp_path):
    at = open_page("qlora")
    at.selectbox(key="qlora_model").set_value("Hub id or local directory…").run()
    at.text_input(key="qlora_custom").set_value(str(tmp_path / "nothing-here")).run()
    button(at, "qlora_load").click().run()
    no_exception(at)
    assert errors(at)


def test_qlora_generate_base_vs_adapter(use_seeded):
    record = next(r for r in Runs(use_seeded).list() if r.name == "seed-gen")
    at = open_page("qlora")
    at.selectbox(key="qlora_gen_run").set_value(record.id).run()
    at.number_input(key="qlora_tokens").set_value(3).run()
    button(at, "qlora_generate").click().run()
    no_exception(at)
    assert not errors(at), errors(at)
    table = next(d.value for d in at.dataframe if "prompt" in d.value.columns)
    assert list(table.columns) == ["prompt", "base", "tuned"]
    assert len(table) == len(ExperimentConfig().generate.prompts)
