"""Fault injection for tests/reliability, loaded by Python at start-up in processes whose PYTHONPATH holds this
folder (the tests put it there; the launcher passes PYTHONPATH on to the workers it starts). It does nothing
unless the process is a worker whose current directory (its run directory) holds `fault.json`, or
LORA_LAB_TEST_FAULT holds a spec for every worker. With LORA_LAB_TEST_FAULT_WAIT set, a worker waits for its
fault.json (`{}`: no fault) before it goes on.

A spec: {"at": WHERE, "nth": N, "do": WHAT} and optionally "name" (count only writes of a file of that name) or
"within" (count only writes whose path contains this text). Counts start at 0 in each worker process.
  WHERE  safetensors     the Nth safetensors save_file (adapter weights of a checkpoint or of the final adapter)
         torch.save      the Nth torch.save (optimizer, scheduler, RNG state of a checkpoint)
         trainer_state   the Nth trainer_state.json the Trainer writes (the last file of a checkpoint)
         write_json      the Nth files.write_json of a file called `name` (results.json, checkpoint.done, ...)
         step            the Nth train log event this worker writes (after it is written)
         eval            the Nth eval event (after it is written)
  WHAT   kill            SIGKILL this process: at a write, after half the bytes are on disk (a cut-off write)
         enospc          raise OSError(ENOSPC) instead of writing (a full disk, simulated)
         fill            fill the disk that holds the run directory (real ENOSPC from then on), then go on
  {"do": "quick"}        replace the training recipe by a short sleep that returns results (queue tests)
  {"do": "slow", "seconds": S, "until": N}
                         sleep S seconds at the end of each optimizer step up to step N, in the training
                         thread (a test that needs a moment in the middle of a short run;
                         tests/helpers.slow_first_steps)

Patches are applied as the target modules are imported (an import hook), so modules that bind a function by
name at import (peft and transformers bind safetensors' save_file) get the patched one.
"""
import errno
import importlib.abc
import importlib.util
import json
import os
import signal
import sys
import time

_SPEC = None
if os.environ.get("LORA_LAB_TEST_FAULT_WAIT") and os.path.isfile("config.yaml"):
    # a worker in its run dir whose spec the test writes right after creating the run (a resumed run may be
    # started by the resume itself): wait for it
    _until = time.time() + 120
    while not os.path.isfile("fault.json") and time.time() < _until:
        time.sleep(0.05)
try:
    if os.path.isfile("fault.json"):
        with open("fault.json", encoding="utf-8") as f:
            _SPEC = json.load(f)
    elif os.environ.get("LORA_LAB_TEST_FAULT"):
        _SPEC = json.loads(os.environ["LORA_LAB_TEST_FAULT"])
except (OSError, ValueError):
    _SPEC = None
_COUNT = {}


def _due(where, path=None):
    if not _SPEC or _SPEC.get("at") != where:
        return False
    if _SPEC.get("name") and os.path.basename(str(path)) != _SPEC["name"]:
        return False
    if _SPEC.get("within") and _SPEC["within"] not in str(path):
        return False
    _COUNT[where] = _COUNT.get(where, 0) + 1
    return _COUNT[where] == _SPEC.get("nth", 1)


def _log(text):
    print(f"[fault] {text}", file=sys.stderr, flush=True)


def _kill_after_half(path):
    """Cut the file just written to half its size (a write in progress), then die."""
    try:
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            f.truncate(size // 2)
    except OSError:
        pass
    _log(f"SIGKILL while writing {path}")
    os.kill(os.getpid(), signal.SIGKILL)


def _fill_disk(folder):
    path = os.path.join(folder, "filler.bin")
    written = 0
    try:
        with open(path, "ab") as f:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
                os.fsync(f.fileno())
                written += 65536
    except OSError:
        pass
    _log(f"filled the disk at {folder} ({written} bytes)")


def _act(where, path, write):
    """Run `write()` with the spec's fault applied, when this call is the one it names."""
    if not _due(where, path):
        return write()
    what = _SPEC.get("do")
    if what == "enospc":
        _log(f"ENOSPC while writing {path}")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    result = write()
    if what == "kill":
        _kill_after_half(path)
    return result


def _patch_safetensors(module):
    original = module.save_file

    def save_file(tensors, filename, *args, **kwargs):
        return _act("safetensors", filename, lambda: original(tensors, filename, *args, **kwargs))

    module.save_file = save_file


def _patch_torch(module):
    original = module.save

    def save(obj, f, *args, **kwargs):
        if not isinstance(f, (str, os.PathLike)):
            return original(obj, f, *args, **kwargs)
        return _act("torch.save", f, lambda: original(obj, f, *args, **kwargs))

    module.save = save


def _patch_trainer_callback(module):
    original = module.TrainerState.save_to_json

    def save_to_json(self, json_path):
        return _act("trainer_state", json_path, lambda: original(self, json_path))

    module.TrainerState.save_to_json = save_to_json
    if _SPEC.get("do") == "slow":  # events are written on another thread: slow the steps themselves
        on_step_end = module.CallbackHandler.on_step_end

        def slowed(self, args, state, control):
            if state.global_step <= _SPEC.get("until", 0):
                time.sleep(float(_SPEC.get("seconds", 0.5)))
            return on_step_end(self, args, state, control)

        module.CallbackHandler.on_step_end = slowed


def _patch_files(module):
    write_json, append_event = module.write_json, module.append_event

    def patched_write_json(path, data):
        return _act("write_json", path, lambda: write_json(path, data))

    def patched_append_event(path, event):
        append_event(path, event)
        kind = event.get("kind")
        hit = (kind == "log" and "loss" in event and _due("step")) or (kind == "eval" and _due("eval"))
        if hit and _SPEC.get("do") == "kill":
            _log(f"SIGKILL after the {kind} event at step {event.get('step')}")
            os.kill(os.getpid(), signal.SIGKILL)
        if hit and _SPEC.get("do") == "fill":
            _fill_disk(os.path.dirname(os.path.dirname(os.path.abspath(path))))

    module.write_json, module.append_event = patched_write_json, patched_append_event


def _quick_train(module):
    """Stands in for lora_core.train without importing it (or pandas, transformers): workers start fast."""
    def run_experiment(cfg, out_dir, *, on_event=None, should_stop=None, resume_from=None, run_info=None):
        if on_event:
            on_event({"kind": "phase", "phase": "training", "time": time.time()})
        time.sleep(float(_SPEC.get("seconds", 0.2)))
        if on_event:
            on_event({"kind": "log", "step": 1, "loss": 1.0, "progress": 1.0, "time": time.time()})
        return {"stopped": False, "steps": 1, "quick": True}

    module.run_experiment = run_experiment


_PATCHES = {"safetensors.torch": _patch_safetensors, "torch": _patch_torch,
            "transformers.trainer_callback": _patch_trainer_callback, "lora_core.runs.files": _patch_files}
_REPLACED = {"lora_core.train": _quick_train} if _SPEC and _SPEC.get("do") == "quick" else {}


class _Replacement(importlib.abc.Loader):
    def create_module(self, spec):
        return None

    def exec_module(self, module):
        _REPLACED[module.__name__](module)


class _Finder(importlib.abc.MetaPathFinder):
    """Patches a target module right after it has been executed, before anyone binds its names."""

    def find_spec(self, name, path, target=None):
        if name in _REPLACED:
            return importlib.util.spec_from_loader(name, _Replacement())
        if name not in _PATCHES:
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None and spec.loader is not None:
                exec_module = spec.loader.exec_module

                def run(module, exec_module=exec_module, name=name):
                    exec_module(module)
                    _PATCHES[name](module)

                spec.loader.exec_module = run
                return spec
        return None


if _SPEC:
    sys.meta_path.insert(0, _Finder())
