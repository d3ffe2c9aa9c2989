"""Where a run trains, on the pages: the Train page's backend / workers / cluster address and cluster panel, the
Config builder's resources, and each run's backend, world size and nodes on Runs and Compare."""
import sys

import pytest

from apptest_helpers import button, errors, no_exception, open_page, texts
from helpers import free_port, tiny_config
from lora_core.config import ExperimentConfig
from lora_core.runs import Runs, RunStatus
from lora_ui import placement

pytestmark = pytest.mark.timeout(300)


def test_the_train_page_launches_with_the_workers_chosen_there(runs_dir):
    at = open_page("train", {"cfg_current": tiny_config(name="two-ranks", **{"train.max_steps": 2000}).to_dict()})
    no_exception(at)
    assert at.radio(key="train_backend").value == "local" and at.number_input(key="train_workers").value == 1
    at.number_input(key="train_workers").set_value(2).run()
    button(at, "train_launch").click().run()
    no_exception(at)
    (record,) = Runs(runs_dir).list(reconcile=False)
    assert record.world_size == 2 and record.backend == "local"
    assert Runs(runs_dir).config(record.id).resources.num_workers == 2
    assert Runs(runs_dir).stop(record.id, timeout=30) is RunStatus.STOPPED


def test_ray_without_an_address_or_with_a_dead_one_says_so(runs_dir, monkeypatch):
    monkeypatch.delenv("LORA_LAB_RAY_ADDRESS", raising=False)
    at = open_page("train", {"cfg_current": tiny_config(name="to-ray").to_dict()})
    at.radio(key="train_backend").set_value("ray").run()
    no_exception(at)
    assert "Give the Ray dashboard's address" in texts(at)
    button(at, "train_launch").click().run()
    assert any("resources.ray_address" in e and "needs a cluster address" in e for e in errors(at)), errors(at)
    dead = f"http://127.0.0.1:{free_port()}"
    at.text_input(key="train_ray_address").set_value(dead).run()
    no_exception(at)
    assert f"cannot use the Ray cluster at {dead}" in texts(at)  # the cluster panel, not a traceback
    at.text_input(key="train_ray_address").set_value("head:8265").run()
    # errors are shown as escaped markdown: a word joiner keeps a URL from turning into a link
    assert any("http://HOST:8265" in e.replace("\u2060", "") for e in errors(at)), errors(at)
    assert Runs(runs_dir).list(reconcile=False) == []


def test_ray_backend_without_ray_installed_names_the_file(runs_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray.job_submission", None)
    at = open_page("train", {"cfg_current": tiny_config(name="no-ray").to_dict()})
    at.radio(key="train_backend").set_value("ray").run()
    no_exception(at)
    assert any("requirements-cluster.txt" in w.value for w in at.warning)
    assert button(at, "train_launch").disabled


def test_the_builder_edits_resources_and_train_follows(runs_dir):
    at = open_page("config_builder", {"cfg_tab": "Training"})
    at.selectbox(key="cfg_resources.backend").set_value("ray").run()
    at.number_input(key="cfg_resources.num_workers").set_value(3).run()
    at.text_input(key="cfg_resources.ray_address").set_value("http://head:8265").run()
    no_exception(at)
    current = ExperimentConfig.from_dict(at.session_state["cfg_current"])
    assert (current.resources.backend, current.resources.num_workers, current.resources.ray_address) == \
        ("ray", 3, "http://head:8265")
    at.text_input(key="cfg_resources.ray_address").set_value("http://u:p@head:8265").run()
    assert "RAY_AUTH_TOKEN" in texts(at)  # the error names where a token goes instead


def test_launch_config_and_placement_text():
    cfg = tiny_config()
    state = {"backend": "ray", "workers": 2, "ray_address": " http://head:8265 "}
    out = placement.launch_config(cfg, state)
    assert (out.resources.backend, out.resources.num_workers, out.resources.ray_address) == \
        ("ray", 2, "http://head:8265")
    assert placement.launch_config(cfg, {"backend": "local", "workers": 1, "ray_address": ""}).resources \
        == cfg.resources

    class Rec:
        backend, world_size, nodes = "ray", 2, ["a", "b"]
    assert placement.placement_text(Rec) == "ray ×2 on 2 nodes"
    Rec.backend, Rec.world_size, Rec.nodes = None, 1, []
    assert placement.placement_text(Rec) == "local"


def test_runs_and_compare_show_backend_world_size_and_nodes(use_seeded):
    at = open_page("runs")
    no_exception(at)
    table = next(d.value for d in at.dataframe if "where" in d.value.columns)
    assert set(table["where"]) == {"local"}
    assert "Trained on: local" in texts(at)
    at = open_page("compare")
    no_exception(at)
    frame = next(d.value for d in at.dataframe if "world size" in d.value.columns)
    assert set(frame["world size"]) == {1} and set(frame["backend"]) == {"local"}
