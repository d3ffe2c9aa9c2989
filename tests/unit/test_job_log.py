"""A Ray job copies its output into the run's worker.log as it prints (runs/job.py tee_output), so the dashboard
tails a file instead of downloading the job's whole log from the Jobs API on every refresh."""
import os
import subprocess
import sys

from helpers import ROOT

CHILD = """
import os, sys
from pathlib import Path
from lora_core.runs.job import tee_output

restore = tee_output(Path(sys.argv[1]))
print("python line", flush=True)
os.write(2, b"stderr from C\\n")  # below Python's sys.stderr, as a library's own write
sys.stdout.write("no newline at the end")
restore()
print("after the copy", flush=True)
"""


def run_child(script: str, log) -> subprocess.CompletedProcess:
    """`script` in a fresh interpreter with the log's path as its argument; its stdout stands for Ray's job log."""
    return subprocess.run([sys.executable, "-c", script, str(log)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)


def test_job_output_goes_to_ray_and_to_worker_log(tmp_path):
    log = tmp_path / "worker.log"
    log.write_bytes(b"kept\n")  # the copy appends
    proc = run_child(CHILD, log)
    assert proc.returncode == 0, proc.stderr
    copied = log.read_text()
    assert copied == "kept\npython line\nstderr from C\nno newline at the end"
    # what Ray's job log gets (the job's stdout): everything, the copy's part and what came after it
    assert proc.stdout == "python line\nstderr from C\nno newline at the end" + "after the copy\n"


KILLED = """
import os, signal, sys
from pathlib import Path
import psutil
from lora_core.runs.job import tee_output

tee_output(Path(sys.argv[1]))
print("last words before the kill", flush=True)
for process in psutil.Process().children(recursive=True):  # as Ray's stop_job ends a job: it and its children
    process.kill()
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_jobs_last_lines_reach_both_logs(tmp_path):
    """The copier is a process of its own and not the job's child: it outlives a stop's SIGKILL to the job and
    its children, and drains what the job wrote before."""
    log = tmp_path / "worker.log"
    proc = run_child(KILLED, log)
    assert proc.returncode == -9
    assert log.read_text() == "last words before the kill\n"
    assert proc.stdout == "last words before the kill\n"
