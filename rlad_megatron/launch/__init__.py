"""Cluster launch: the layout and memory planner, and nemo-run factories and executors.

  memory.py      per-GPU bytes of one TP x PP x DP layout (weights, grads, optimizer, activations,
                 log-prob chunk, KV cache), with the formulas in its docstring
  step_time.py   estimated seconds of one step under a layout (assumptions in `Hardware`)
  plan.py        `rlad plan`: model sources, valid layouts ranked by step time among those that
                 fit (host memory of a streamed teacher included), refusals
  plan_report.py the table and JSON forms of a plan
  torchrun.py    torchrun that forwards SIGUSR1 and exits 0 after a clean preemption save
  nemo_run.py    recipe factories (run.Partial of `rlad_train`), Slurm / local executors,
                 `launch()`, and the command line `python -m rlad_megatron.launch`
  plan_check.py  the nemo-run plugin that runs the planner before a submission

Only nemo_run.py's functions and plan_check.py import nemo-run (the `launch` extra); the planner
needs nothing beyond the package. The Slurm side lives in slurm/ (rlad_train.sbatch, submit.sh);
docs/launch.md describes both.
"""
