"""Config builder page: counts follow the knobs, exports round-trip, bad input becomes st.error."""
import pytest
import yaml

from apptest_helpers import errors, no_exception, open_page, open_tab, texts
from lora_core.config import ExperimentConfig
from lora_core.models import count_params
from lora_ui.format import fmt_bytes, fmt_count

pytestmark = pytest.mark.timeout(300)


def metric(at, label):
    return next(m.value for m in at.metric if m.label == label)


def exported_yaml(at) -> str:
    open_tab(at, "Export")
    return next(c.value for c in at.code if c.language == "yaml")


def test_defaults_render_with_live_counts(runs_dir):
    at = open_page("config_builder")
    no_exception(at)
    assert not errors(at)
    # the offline default: bundled MiniLM, LoRA on Q+V, the 2-class sample
    assert at.selectbox(key="cfg_model_choice").value == "minilm"
    assert [t.label for t in at.tabs] == ["Model & method", "LoRA layers & knobs", "Data", "Training", "Export"]
    assert at.number_input.len == 0 and not at.dataframe  # a first visit draws the open tab only
    expected = count_params(ExperimentConfig.from_dict({"lora": {"target_modules": "preset:qv"}}))
    assert metric(at, "Trainable params") == fmt_count(expected["trainable"])
    assert metric(at, "% of the model") == f"{expected['percent']:.3f}%"
    from lora_core.memory import estimate_for_experiment

    est = estimate_for_experiment(ExperimentConfig.from_dict(at.session_state["cfg_current"]), num_labels=2)
    assert metric(at, "Est. training memory") == fmt_bytes(est["peak_bytes"])
    # the adaptable layers on their tab, the data preview on its own
    layer_table = next(d.value for d in open_tab(at, "LoRA layers & knobs").dataframe if "layer" in d.value.columns)
    assert {"query", "key", "value"} <= set(layer_table["layer"])
    assert bool(layer_table.set_index("layer").loc["query", "adapt"]) is True
    assert bool(layer_table.set_index("layer").loc["key", "adapt"]) is False
    open_tab(at, "Data")
    assert at.selectbox(key="cfg_train_choice").value == "sample:sentiment-2"
    preview = next(d.value for d in at.dataframe if "text" in d.value.columns and "label" in d.value.columns)
    assert len(preview) == 5
    assert metric(at, "Trainable params") == fmt_count(expected["trainable"])  # the summary shows on every tab


def test_rank_and_targets_change_the_counts(runs_dir):
    at = open_tab(open_page("config_builder"), "LoRA layers & knobs")
    at.number_input(key="cfg_lora.r").set_value(16).run()
    no_exception(at)
    r16 = count_params(ExperimentConfig.from_dict({"lora": {"r": 16, "target_modules": "preset:qv"}}))
    assert metric(at, "Trainable params") == fmt_count(r16["trainable"])
    at.radio(key="cfg_targets_mode").set_value("custom").run()
    at.multiselect(key="cfg_targets_custom").set_value(["query", "key", "value"]).run()
    no_exception(at)
    qkv = count_params(ExperimentConfig.from_dict({"lora": {"r": 16, "target_modules": ["query", "key", "value"]}}))
    assert qkv["trainable"] > r16["trainable"]
    assert metric(at, "Trainable params") == fmt_count(qkv["trainable"])
    assert "Scaling of the update" in texts(at)


def test_yaml_export_round_trips(runs_dir):
    at = open_page("config_builder")
    at.text_input(key="cfg_name").set_value("my sweep base").run()
    open_tab(at, "LoRA layers & knobs").number_input(key="cfg_lora.r").set_value(4).run()
    open_tab(at, "Training").number_input(key="cfg_train.max_steps").set_value(7).run()
    at.text_input(key="cfg_train.learning_rate").set_value("3e-4").run()
    no_exception(at)
    cfg = ExperimentConfig.from_text(exported_yaml(at))
    assert (cfg.name, cfg.lora.r, cfg.train.max_steps, cfg.train.learning_rate) == ("my sweep base", 4, 7, 3e-4)
    assert ExperimentConfig.from_dict(yaml.safe_load(cfg.to_yaml())) == cfg
    assert at.session_state["cfg_current"] == cfg.to_dict()  # what the Train page will launch
    labels = [b.label for b in at.download_button]
    assert any("YAML" in x for x in labels) and any("JSON" in x for x in labels)
    cli = [c.value for c in at.code if c.language == "bash"]
    assert cli == ["python -m lora_core train my-sweep-base.yaml --wait"]


def test_peft_snippet_builds_the_same_model(runs_dir):
    """The exported transformers+peft code, executed for real, trains exactly the params the page shows."""
    at = open_tab(open_page("config_builder"), "LoRA layers & knobs")
    at.number_input(key="cfg_lora.r").set_value(4).run()
    open_tab(at, "Export")
    snippet = next(c.value for c in at.code if c.language == "python")
    assert "LoraConfig(" in snippet and "r=4," in snippet
    scope: dict = {}
    exec(compile(snippet, "<peft snippet>", "exec"), scope)  # noqa: S102 - our own generated code
    model = scope["model"]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    expected = count_params(ExperimentConfig.from_dict({"lora": {"r": 4}}))["trainable"]
    assert trainable == expected
    assert metric(at, "Trainable params") == fmt_count(trainable)


def test_bad_learning_rate_is_an_error_next_to_the_field(runs_dir):
    at = open_tab(open_page("config_builder"), "Training")
    at.text_input(key="cfg_train.learning_rate").set_value("fast please").run()
    no_exception(at)
    assert any("train.learning_rate" in e and "must be a number" in e for e in errors(at))
    # seen from another tab, the summary says where the field is
    assert any("Fix **train.learning_rate** (Training tab)" in e for e in errors(open_tab(at, "Data")))
    # nothing exportable while invalid
    assert "Fix the problem named above the tabs" in texts(open_tab(at, "Export"))


def test_cross_field_rule_shows_config_error(runs_dir):
    at = open_page("config_builder")
    at.selectbox(key="cfg_task").set_value("causal-lm").run()
    no_exception(at)
    # the task brings its own sample (a sentiment sample has no prompt/response columns)
    assert open_tab(at, "Data").selectbox(key="cfg_train_choice").value == "sample:instructions"
    assert not errors(at), errors(at)
    open_tab(at, "Model & method").selectbox(key="cfg_method").set_value("head-only").run()
    no_exception(at)
    assert any("head-only" in e for e in errors(at)), errors(at)


def test_unknown_model_and_missing_file_are_errors(runs_dir, tmp_path):
    at = open_page("config_builder")
    at.selectbox(key="cfg_model_choice").set_value("Hub id or local directory…").run()
    at.text_input(key="cfg_model_custom").set_value(str(tmp_path / "no-such-model")).run()
    no_exception(at)
    assert any("model.source" in e for e in errors(at))

    at.selectbox(key="cfg_model_choice").set_value("minilm").run()
    bad = tmp_path / "reviews.csv"
    bad.write_text("sentence,label\nnice,1\nbad,0\n")
    open_tab(at, "Data").selectbox(key="cfg_train_choice").set_value("Local file or hub dataset…").run()
    at.text_input(key="cfg_train_custom").set_value(str(bad)).run()
    no_exception(at)
    # the data error names the missing column
    assert any("text" in e and "reviews.csv" in e for e in errors(at)), errors(at)
    at.text_input(key="cfg_data.text_column").set_value("sentence").run()
    no_exception(at)
    assert not errors(at)


def test_load_saved_config(runs_dir):
    saved = ExperimentConfig.from_dict({"name": "from-disk", "lora": {"r": 32, "alpha": 64},
                                        "model": {"source": "tiny-random-gpt2"}, "train": {"max_steps": 3}})
    at = open_page("config_builder")
    at.file_uploader(key="cfg_upload").set_value(("saved.yaml", saved.to_yaml().encode(), "application/x-yaml"))
    at.run()
    no_exception(at)
    assert at.text_input(key="cfg_name").value == "from-disk"
    assert at.selectbox(key="cfg_model_choice").value == "tiny-random-gpt2"
    assert open_tab(at, "LoRA layers & knobs").number_input(key="cfg_lora.r").value == 32
    assert ExperimentConfig.from_text(exported_yaml(at)).lora.alpha == 64
    assert any("Loaded saved.yaml" in s.value for s in at.success)  # until the next action replaces it


def test_load_bad_config_file_is_an_error(runs_dir):
    at = open_page("config_builder")
    at.file_uploader(key="cfg_upload").set_value(("bad.yaml", b"lora: {r: 8, rank: 4}\n", "application/x-yaml"))
    at.run()
    no_exception(at)
    assert any("lora.rank" in e and "unknown key" in e for e in errors(at))
    assert open_tab(at, "LoRA layers & knobs").number_input(key="cfg_lora.r").value == 8  # the form is unchanged


@pytest.mark.timeout(700)
def test_lr_find_chart_and_apply(runs_dir):
    at = open_tab(open_page("config_builder"), "Training")
    at.number_input(key="cfg_train.batch_size").set_value(8).run()
    next(b for b in at.button if b.key == "cfg_lr_find").click().run(timeout=400)
    no_exception(at)
    assert not errors(at), errors(at)
    result = at.session_state["cfg_lr_result"]
    assert result["lrs"][0] <= result["suggestion"] <= result["lrs"][-1] and "steepest" in texts(at)
    next(b for b in at.button if b.key == "cfg_lr_apply").click().run()
    no_exception(at)
    assert at.text_input(key="cfg_train.learning_rate").value == f"{result['suggestion']:.3g}"
