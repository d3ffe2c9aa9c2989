"""The machine meter a worker runs beside training: what it records and when it calls a time contended."""
from lora_core.runs.machine import MachineMeter


def test_nothing_recorded_before_training_began():
    meter = MachineMeter()
    meter.sample()
    meter.finish()
    assert meter.summary() == {}


def test_another_run_training_meanwhile_marks_the_time_busy():
    others = iter([0, 1, 0])
    meter = MachineMeter(lambda: next(others))
    meter.begin()
    meter.sample()
    meter.finish()
    summary = meter.summary()
    assert summary["machine_other_runs"] == 1 and summary["machine_busy"] is True
    assert summary["machine_cpus"] >= 1 and summary["machine_other_cpu_cores"] >= 0
    assert summary["machine_load_avg_max"] >= summary["machine_load_avg"] >= 0
