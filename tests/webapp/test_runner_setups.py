"""The runner starts a queued run only on a setup this machine can run: a DeepSpeed run queued where deepspeed is not
installed (a setup the page no longer offers there, or a queue entry from elsewhere) fails with what to do, and
nothing is started."""

import importlib.util

from finetune.rundir import FAILED, RunDirectory
from tests.webapp.test_jobs import FakeTrainers, runner_for
from webapp.runner import jobs


def test_a_run_on_a_setup_missing_its_package_fails_with_what_to_do(no_runner, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "deepspeed" else real_find_spec(name))
    trainers = FakeTrainers()
    run = RunDirectory(no_runner / "runs" / "zero2")
    jobs.enqueue(run, jobs.Job("deepspeed_zero2", 2, 2))
    runner_for(no_runner, trainers, gpu_ids=[0, 1]).tick()
    assert trainers.built == [], "nothing was started"
    assert run.state == FAILED
    assert (
        "needs the deepspeed package, which is not installed here (pip install deepspeed)" in run.read_status()["error"]
    )
