"""The structural rules of the code base, checked on its syntax tree: each run and artifact file name is spelled
only in lora_core/runs/layout.py, each status only in lora_core/runs/store.py, and the runs package and the
CLI's run commands start without torch or pandas."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT
from lora_core.config import ExperimentConfig

LAYOUT = ROOT / "lora_core" / "runs" / "layout.py"
STORE = ROOT / "lora_core" / "runs" / "store.py"
RUN_FILE_NAMES = {"adapter", "label_map.json", "generations.json", "metrics.jsonl", "results.json", "worker.log",
                  "registry.sqlite", "head.safetensors", "head.json", "trainer_state.json", "checkpoints",
                  "config.yaml", "status.json", "artifacts", "merged", "adapter_config.json",
                  "adapter_model.safetensors", "checkpoint.done", "exit.json", "space.reserve", "registry.lock",
                  "votes.jsonl"}
PATH_PARTS = {"model", "head"}  # also dict keys elsewhere: only their use as a path part (`x / "model"`) counts
STATUSES = {"QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "STOPPED"}


def product_files() -> list[Path]:
    files = [p for folder in ("lora_core", "lora_ui", "pages") for p in (ROOT / folder).rglob("*.py")]
    return sorted(files + [ROOT / "app.py"])


def string_constants(path: Path):
    """(line, text, is a path part joined with /) for every string constant of a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    joined = {id(node.right) for node in ast.walk(tree) if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value, id(node) in joined


def test_run_file_names_are_spelled_only_in_layout():
    found = [f"{path.relative_to(ROOT)}:{line}: {value!r}" for path in product_files() if path != LAYOUT
             for line, value, path_part in string_constants(path)
             if value in RUN_FILE_NAMES or (path_part and value in PATH_PARTS)]
    assert not found, "spell these through lora_core.runs.layout:\n" + "\n".join(found)


def test_statuses_are_spelled_only_in_store():
    found = [f"{path.relative_to(ROOT)}:{line}: {value!r}" for path in product_files() if path != STORE
             for line, value, _ in string_constants(path) if value in STATUSES]
    assert not found, "use RunStatus.X instead of:\n" + "\n".join(found)


@pytest.mark.parametrize("command", ["list", "status"])
def test_runs_package_and_cli_run_commands_import_neither_torch_nor_pandas(runs, runs_dir, command):
    run_id = runs.create(ExperimentConfig.from_dict({"name": "light"})).id
    runs.cancel(run_id)  # a finished run: `status` must not start anything
    code = ("import sys; import lora_core.runs; from lora_core.cli import main; "
            f"code = main([{command!r}] + ({[run_id]!r} if {command!r} == 'status' else []) + "
            f"['--runs-dir', {str(runs_dir)!r}]); "
            "print(code, sorted(m for m in ('torch', 'pandas', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "0 []"
