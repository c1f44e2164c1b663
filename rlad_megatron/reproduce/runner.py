"""`rlad reproduce RECIPE [--quick] [overrides]` and `rlad demo`: prepare the teacher and the
student once, train every arm x seed from that student, then write the tables and plots.

    rlad reproduce examples/configs/reproduce.yaml --quick run_dir=runs/repro_quick

Order of work:
  1. load the recipe and check everything before any work: every stage's and every job's
     RunConfig is validated (files that the preparation will make are not required yet), the
     run directory must be new, empty or one this command made (RUN_DIR/.rlad_reproduce);
  2. `rlad prepare` under torchrun (reproduce.prepare_procs processes): tokenizer, teacher SFT,
     student SFT, each cached and reused;
  3. the jobs, reproduce.jobs at a time, each `rlad train RUN_DIR/arms/ARM/seed_S.yaml` under
     torchrun (reproduce.procs processes) with its output in RUN_DIR/logs/ARM_seed_S.log.
     A job whose RUN_DIR/arms/ARM/seed_S/summary.json exists for the same config is reused; an
     interrupted one resumes from its last checkpoint (checkpoint.save_every); a job whose
     config changed is trained again;
  4. results.json, results.md, curves.png, alpha.png (reproduce/results.py).
Why processes per arm rather than one launch: arms are independent, and on a small machine two
single-process arms side by side use the cores better than one arm split by tensor parallelism
(the models here are tiny); on a cluster each arm is a job of its own anyway.
Returns 0 when every job finished, 1 when some failed (the tables hold the finished ones).
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from rlad_megatron.reproduce.headline import headline
from rlad_megatron.reproduce.results import collect, write_results
from rlad_megatron.reproduce.spec import Job, build_jobs, parse_spec
from rlad_megatron.config.active import reset_inactive
from rlad_megatron.config.run import RunConfig, same_config
from rlad_megatron.config.validate import validate_run_config
from rlad_megatron.reproduce.recipe import (PREP_STAGES, load_recipe, owned_or_absent, rl_config,
                                            stage_configs)
from rlad_megatron.bookkeeping.timers import progress

MARKER = ".rlad_reproduce"


def _torchrun(procs: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={procs}"]


def check_before_work(stages: dict[str, RunConfig], jobs: list[Job], spec, run_dir: Path,
                      cache: Path) -> None:
    """Every config valid, the run directory and cache folders ours (module docstring)."""
    for name, cfg in stages.items():
        try:
            validate_run_config(cfg, spec.prepare_procs, check_files=False)
        except ValueError as e:
            raise ValueError(f"stage {name}: {e}") from None
    for job in jobs:
        try:
            validate_run_config(job.cfg, spec.procs, check_files=False)
        except ValueError as e:
            raise ValueError(f"arm {job.arm} (seed {job.seed}): {e}") from None
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"run_dir {run_dir} is a file")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not (run_dir / MARKER).exists():
        raise ValueError(f"run_dir {run_dir} is not empty and was not made by rlad reproduce "
                         f"(no {MARKER}); choose a new run_dir")
    for _, role in PREP_STAGES:
        owned_or_absent(cache / role)


def claim(run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / MARKER).write_text("made by rlad reproduce; its arms/ and logs/ may be replaced\n")
    probe = run_dir / ".write_probe"
    try:
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"run_dir {run_dir} is not writable: {e}") from None


def job_state(job: Job) -> str:
    """'done' (reusable), 'resume' (same config, unfinished) or 'new'. The saved config is read
    back through the schema (config/run.py same_config), so a field added to RunConfig since,
    at its default, does not make a finished run "new"; nor does an option the arm does not use
    (config/active.py: a run saved before such options were reset to their defaults)."""
    same = same_config(job.run_dir.with_suffix(".yaml"), job.cfg, view=reset_inactive)
    if same and (job.run_dir / "summary.json").exists():
        return "done"
    return "resume" if same else "new"


JOB_ENV = {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
"""Every process of a reproduction (preparation and arms) computes on one CPU thread: MKL splits a
matrix product differently over 2 threads than over 1 (other fp32 round-off), so a thread count
that followed the machine's cores, or how many runs are left, would give other numbers from the
same command. More cores run more jobs at once (reproduce.jobs) instead."""


def start_job(job: Job, log_dir: Path, procs: int) -> subprocess.Popen:
    cfg_file = job.run_dir.with_suffix(".yaml")
    if job_state(job) == "new" and job.run_dir.exists():
        shutil.rmtree(job.run_dir)  # under RUN_DIR/arms, which this command owns
    cfg_file.parent.mkdir(parents=True, exist_ok=True)
    cfg_file.write_text(job.config_yaml)
    env = {**os.environ, **JOB_ENV}
    log = open(log_dir / f"{job.arm}_seed_{job.seed}.log", "w")
    cmd = _torchrun(procs) + ["-m", "rlad_megatron.cli", "train", str(cfg_file)]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def run_jobs(jobs: list[Job], spec, run_dir: Path) -> list[str]:
    """Run the unfinished jobs, spec.jobs at a time; returns the failures' descriptions."""
    log_dir = run_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    todo = [j for j in jobs if job_state(j) != "done"]
    if len(todo) < len(jobs):
        print(f"reproduce: reusing {len(jobs) - len(todo)} finished run(s)", flush=True)
    running: dict[subprocess.Popen, tuple[Job, float]] = {}
    failures = []
    bar = progress(len(todo), desc="arms x seeds", unit="run", mininterval=5.0)
    queue = list(todo)
    try:
        _schedule(queue, running, failures, bar, spec, log_dir)
    finally:  # interrupted (Ctrl-C, SIGTERM): no orphaned training processes; they resume later
        for proc in running:
            proc.terminate()
        for proc in running:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        bar.close()
    return failures


def _schedule(queue, running, failures, bar, spec, log_dir) -> None:
    while queue or running:
        started = False
        while queue and len(running) < spec.jobs:
            job = queue.pop(0)
            running[start_job(job, log_dir, spec.procs)] = (job, time.time())
            started = True
        if started:
            bar.set_postfix_str("running " + ", ".join(f"{j.arm}/{j.seed}"
                                                       for j, _ in running.values()),
                                refresh=False)
        time.sleep(1.0)
        for proc in [p for p in running if p.poll() is not None]:
            job, t0 = running.pop(proc)
            tag = f"{job.arm} seed {job.seed}"
            if proc.returncode != 0:
                failures.append(f"{tag}: exit {proc.returncode}, see "
                                f"{log_dir / f'{job.arm}_seed_{job.seed}.log'}")
                bar.write(f"reproduce: FAILED {failures[-1]}")
            else:
                bar.write(f"reproduce: {tag} done in {time.time() - t0:.0f} s")
            bar.update(1)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def prepare_stages(path: str, overrides: list[str], procs: int) -> int:
    """`rlad prepare` of the recipe under torchrun with JOB_ENV (its cached tokenizer, teacher and
    student); the exit code. Interrupted (Ctrl-C, SIGTERM), it stops the preparation through
    SIGTERM: torchrun passes it on, its workers checkpoint and exit."""
    prep = subprocess.Popen(_torchrun(procs) + ["-m", "rlad_megatron.cli", "prepare", path,
                                                *overrides], env={**os.environ, **JOB_ENV})
    try:
        prep.wait()
    finally:
        if prep.poll() is None:
            prep.terminate()
            try:
                prep.wait(timeout=60)
            except subprocess.TimeoutExpired:
                prep.kill()
    return prep.returncode


def checked_plan(path: str, overrides: list[str], *, quick: bool = False,
                 jobs: int | None = None):
    """A reproduction's (spec, jobs, run_dir, cache), every config and folder checked before any
    work (check_before_work); also `rlad map`'s check of each cell (reproduce/grid.py)."""
    settings, configs, node = load_recipe(path, overrides)
    spec = parse_spec(node, quick=quick, jobs=jobs)
    run_dir, cache = Path(settings["run_dir"]), Path(settings["cache_dir"])
    stages = stage_configs(settings, copy.deepcopy(configs))
    job_list = build_jobs(spec, rl_config(settings, configs, str(run_dir)), run_dir)
    check_before_work(stages, job_list, spec, run_dir, cache)
    return spec, job_list, run_dir, cache


def reproduce(path: str, overrides: list[str], *, quick: bool = False, demo: bool = False,
              jobs: int | None = None) -> int:
    spec, job_list, run_dir, cache = checked_plan(path, overrides, quick=quick, jobs=jobs)
    claim(run_dir)
    # both set here: a process started in the background inherits SIGINT ignored, and Ctrl-C (or
    # a scheduler's SIGINT) must still stop the runs cleanly
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    t0 = time.time()
    print(f"reproduce: {len(job_list)} runs ({', '.join(spec.arm_names)} x seeds "
          f"{spec.seeds}) into {run_dir}; teacher and student cached in {cache}", flush=True)
    code = prepare_stages(path, overrides, spec.prepare_procs)
    if code != 0:
        print(f"reproduce: preparing the teacher and student failed (exit {code})",
              file=sys.stderr)
        return 1
    failures = run_jobs(job_list, spec, run_dir)
    results = collect(job_list, spec, run_dir)
    results["command"] = " ".join(["rlad", "demo" if demo else "reproduce", path,
                                   *(["--quick"] if quick else []), *overrides])
    files = write_results(results, run_dir)
    print("\n" + results["summary_md"], flush=True)
    for committed in spec.headline:
        print(headline(committed), flush=True)
    print(f"reproduce: wrote {', '.join(str(f) for f in files)} "
          f"(this launch {(time.time() - t0) / 60:.1f} min; the runs in the tables "
          f"{results['runs_wall_s'] / 3600:.2f} h)", flush=True)
    if failures:
        print("reproduce: failed runs:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0
