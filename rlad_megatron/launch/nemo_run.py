"""nemo-run launch of `rlad train`: recipe factories, Slurm and local executors, a command line.

    python -m rlad_megatron.launch --factory qwen3_32b_to_8b \\
        cfg.student.checkpoint=/ckpts/qwen3-8b cfg.teacher.checkpoint=/ckpts/qwen3-32b \\
        run.executor=slurm run.executor.account=proj run.executor.partition=batch \\
        run.executor.nodes=4 run.executor.container_image=nvcr.io/nvidia/nemo:25.09 --yes
    python -m rlad_megatron.launch --factory "from_yaml(path='/abs/my.yaml')" \\
        cfg.train.steps=20 run.executor=local run.executor.gpus=2 --yes       # one machine
    ... --dryrun                                                           # print, submit nothing

A recipe factory returns `run.Partial(rlad_train, cfg=<the RunConfig as a run.Config tree>)`,
built from its YAML in examples/configs/ (`recipe_path`: or a folder the user passes), so every
field of the run config is a dotted override (`cfg.rollout.group_size=16`), as in NeMo's
`trainer.max_steps=...`. `rlad_train`
runs in every rank: it resolves the config exactly as `rlad train` does and trains.

Executors:
  slurm   SlurmExecutor: one srun task per GPU (the default; as slurm/rlad_train.sbatch) or
          `launcher="torchrun"` (one torchrun per node); pyxis container image and mounts;
          LocalTunnel on a login node, or SSHTunnel(host, user, job_dir, identity) from elsewhere;
          `--signal=USR1@120` makes the ranks checkpoint and exit 0 before the time limit (a
          clean exit is not requeued by nemo-run: resubmit to resume; slurm/rlad_train.sbatch
          requeues by itself).
  local   LocalExecutor with torchrun, for one machine.
Before anything is submitted, the PlanCheck plugin (launch/plan_check.py, which this module
imports and which does not import it back; used by `launch()` and the command line) runs
`rlad plan` on the task's config and the executor's nodes and GPUs, and refuses a layout that
does not divide the models or does not fit.

nemo-run (the `launch` extra: nemo-run, leptonai<0.47) is imported inside the functions, so
the rest of rlad_megatron, and `rlad_train` itself, work without it. Paths in the config should
be absolute: nemo-run starts the ranks in its own job directory.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import typing
from pathlib import Path
from typing import Optional, Sequence

from rlad_megatron.config.run import RunConfig, resolve_run_config

RECIPES = {"qwen3_8b_to_1_7b": "qwen3_8b_to_1.7b.yaml", "qwen3_32b_to_8b": "qwen3_32b_to_8b.yaml",
           "llama31_405b_to_8b": "llama31_405b_to_8b.yaml",
           "llama31_405b_to_8b_1node": "llama31_405b_to_8b_1node.yaml",
           "llama31_405b_to_8b_2node": "llama31_405b_to_8b_2node.yaml",
           "llama31_70b_to_8b": "llama31_70b_to_8b.yaml"}
"""factory name -> its YAML in the recipe folder (slurm/README.md gives their node counts)."""


def recipe_path(factory: str, config_dir: Optional[str] = None) -> Path:
    """The YAML of a recipe factory, in `config_dir`, else $RLAD_CONFIG_DIR, else the
    examples/configs/ of the source checkout this package runs from (an editable install). A
    wheel install has no checkout: pass config_dir= (or set RLAD_CONFIG_DIR) to a copy of
    examples/configs/."""
    checkout = Path(__file__).resolve().parents[2] / "examples" / "configs"
    folder = config_dir or os.environ.get("RLAD_CONFIG_DIR") or (checkout if checkout.is_dir()
                                                                else None)
    if folder is None:
        raise FileNotFoundError(f"recipe {factory}: no recipe folder; pass config_dir= or set "
                                "RLAD_CONFIG_DIR to a copy of the repository's examples/configs")
    path = Path(folder) / RECIPES[factory]
    if not path.is_file():
        raise FileNotFoundError(f"recipe {factory}: {path} does not exist")
    return path
ENV_VARS = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "CUDA_DEVICE_MAX_CONNECTIONS": "1",
            "TORCH_NCCL_AVOID_RECORD_STREAMS": "1", "NCCL_NVLS_ENABLE": "0",
            "NCCL_IB_TIMEOUT": "19", "NCCL_DEBUG": "WARN"}
"""The environment of every rank (as in slurm/rlad_train.sbatch)."""


# ----------------------------------------------------------------------------- the entry point
def rlad_train(cfg: Optional[RunConfig] = None, config_file: Optional[str] = None,
               overrides: Sequence[str] = ()) -> dict:
    """Train in this rank: a RunConfig (or a YAML file) plus dotted overrides, as `rlad train`."""
    import torch.distributed as dist

    from rlad_megatron.runtime import destroy_parallel
    from rlad_megatron.train.loop import train

    summary = train(resolve_run_config(cfg, config_file, overrides))
    destroy_parallel()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()     # gloo aborts at exit when the group is left open
    return summary


# ----------------------------------------------------------------------------- recipes
def as_config_tree(obj):
    """A dataclass instance -> nested run.Config of its class (dicts and scalars as they are)."""
    import nemo_run as run

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return run.Config(type(obj), **{f.name: as_config_tree(getattr(obj, f.name))
                                        for f in dataclasses.fields(obj) if f.init})
    return obj


def from_yaml(path: str, overrides: Sequence[str] = ()):
    """run.Partial(rlad_train, cfg=...) from any run config YAML (+ dotted overrides)."""
    import nemo_run as run

    from rlad_megatron.config.run import load_config

    return run.Partial(rlad_train, cfg=as_config_tree(load_config(str(path), list(overrides))))


def qwen3_8b_to_1_7b(config_dir: Optional[str] = None):
    """Qwen3-8B teacher -> Qwen3-1.7B student, 1 node x 8 GPUs (TP=2, DP=4)."""
    return from_yaml(recipe_path("qwen3_8b_to_1_7b", config_dir))


def qwen3_32b_to_8b(config_dir: Optional[str] = None):
    """Qwen3-32B teacher -> Qwen3-8B student, 4 nodes x 8 GPUs (TP=4, DP=8)."""
    return from_yaml(recipe_path("qwen3_32b_to_8b", config_dir))


def llama31_405b_to_8b(config_dir: Optional[str] = None):
    """Llama-3.1-405B teacher -> Llama-3.1-8B student, 8 nodes x 8 GPUs (TP=8, PP=2, DP=4)."""
    return from_yaml(recipe_path("llama31_405b_to_8b", config_dir))


def llama31_405b_to_8b_1node(config_dir: Optional[str] = None):
    """Llama-3.1-405B teacher streamed from host memory -> Llama-3.1-8B student, 1 node x 8 GPUs
    (TP=4, DP=2; 1.5 TiB of host memory for the teacher's layers)."""
    return from_yaml(recipe_path("llama31_405b_to_8b_1node", config_dir))


def llama31_405b_to_8b_2node(config_dir: Optional[str] = None):
    """Llama-3.1-405B teacher on its own layout (TP=8, PP=2) -> Llama-3.1-8B student (TP=8,
    DP=2), 2 nodes x 8 GPUs."""
    return from_yaml(recipe_path("llama31_405b_to_8b_2node", config_dir))


def llama31_70b_to_8b(config_dir: Optional[str] = None):
    """Llama-3.1-70B teacher on its own layout (TP=8) -> Llama-3.1-8B student (TP=2, DP=4),
    1 node x 8 GPUs."""
    return from_yaml(recipe_path("llama31_70b_to_8b", config_dir))


# ----------------------------------------------------------------------------- executors
def slurm_executor(account: Optional[str] = None, partition: Optional[str] = None,
                   nodes: int = 1, gpus_per_node: int = 8, time: str = "04:00:00",
                   container_image: Optional[str] = None, container_mounts: Sequence[str] = (),
                   launcher: Optional[str] = None, tunnel: str = "local",
                   host: Optional[str] = None, user: Optional[str] = None, port: int = 22,
                   identity: Optional[str] = None, job_dir: str = "",
                   env_vars: Optional[dict] = None, retries: int = 0,
                   signal: Optional[str] = "USR1@120"):
    """SlurmExecutor: `gpus_per_node` ranks per node (srun tasks, or torchrun workers with
    launcher="torchrun"), exclusive nodes, a pyxis container when `container_image` is set.

    tunnel="local" submits from this machine (a login node; job_dir must be "" so that it is
    $NEMORUN_HOME/experiments); tunnel="ssh" submits through host/user/identity, staging the
    experiment in `job_dir` on the cluster."""
    import nemo_run as run

    if tunnel == "local":
        tunnel_obj = run.LocalTunnel(job_dir=job_dir)
    elif tunnel == "ssh":
        if not (host and user and job_dir):
            raise ValueError("tunnel='ssh' needs host, user and job_dir (a directory on the "
                             "cluster for nemo-run's experiment files)")
        tunnel_obj = run.SSHTunnel(host=host, user=user, port=port, job_dir=job_dir,
                                   identity=identity)
    else:
        raise ValueError(f"tunnel: {tunnel!r} is not one of local, ssh")
    executor = run.SlurmExecutor(
        account=account, partition=partition, nodes=nodes, ntasks_per_node=gpus_per_node,
        gpus_per_node=gpus_per_node or None, time=time, exclusive=True, mem="0",
        container_image=container_image, container_mounts=list(container_mounts),
        tunnel=tunnel_obj, packager=run.Packager(), env_vars={**ENV_VARS, **(env_vars or {})},
        retries=retries, signal=signal, poll_estimated_start_time=False,
        job_name_prefix="rlad-")
    if launcher == "torchrun":
        executor.launcher = "torchrun"
    elif launcher is None:       # one srun task per rank: runtime/distributed.py reads SLURM_*
        executor.setup_lines = ("export MASTER_ADDR=$head_node_ip "
                                "MASTER_PORT=$((20000 + SLURM_JOB_ID % 2000 * 20))")
    else:
        raise ValueError(f"launcher: {launcher!r} is not one of None (srun), torchrun")
    return executor


def slurm_ssh_executor(host: str = os.environ.get("RLAD_SSH_HOST", "login"),
                       user: str = os.environ.get("USER", "root"),
                       job_dir: str = os.environ.get("RLAD_SSH_JOB_DIR", "nemo_run"),
                       identity: Optional[str] = os.environ.get("RLAD_SSH_IDENTITY")):
    """slurm_executor through an SSH tunnel; on the command line set the login node with
    RLAD_SSH_HOST / RLAD_SSH_USER / RLAD_SSH_JOB_DIR or run.executor.tunnel.host=..."""
    return slurm_executor(tunnel="ssh", host=host, user=user, job_dir=job_dir, identity=identity)


def local_executor(gpus: int = 8, env_vars: Optional[dict] = None):
    """LocalExecutor: torchrun with `gpus` ranks on this machine."""
    import nemo_run as run

    return run.LocalExecutor(ntasks_per_node=gpus, launcher="torchrun",
                             env_vars={**ENV_VARS, **(env_vars or {})})


# ----------------------------------------------------------------------------- running
def launch(task, executor, *, name: str = "rlad", detach: bool = False, dryrun: bool = False,
           gpu_memory_gib: float = 80.0, prompt_len: int = 1024) -> dict:
    """Check the layout, then run `task` on `executor` in a nemo-run Experiment; returns
    {task name: status dict} (exp.status). With detach=False it waits for the end."""
    import nemo_run as run

    from rlad_megatron.launch.plan_check import PlanCheck

    plugin = PlanCheck(gpu_memory_gib=gpu_memory_gib, prompt_len=prompt_len)
    with run.Experiment(name, executor=executor, enable_goodbye_message=False) as exp:
        exp.add(task, name=name, tail_logs=False, plugins=[plugin])
        if dryrun:
            exp.dryrun(log=False, delete_exp_dir=False)
            return {"exp_dir": exp._exp_dir}
        exp.run(detach=detach)
    return exp.status(return_dict=True)


def _register_cli(run) -> None:
    """nemo-run's CLI decorators, applied here rather than at import (nemo-run is optional)."""
    run.cli.factory(target=rlad_train, name="from_yaml")(from_yaml)
    for name in RECIPES:
        run.cli.factory(target=rlad_train, name=name)(globals()[name])
    run.cli.factory(name="slurm")(_config_factory(run, slurm_executor, run.SlurmExecutor))
    run.cli.factory(name="slurm_ssh")(_config_factory(run, slurm_ssh_executor, run.SlurmExecutor))
    run.cli.factory(name="local")(_config_factory(run, local_executor, run.LocalExecutor))
    _register_string_annotations()


def _register_string_annotations() -> None:
    """The run config's modules use `from __future__ import annotations`, so its fields' types are
    strings ("int", "Optional[str]") that nemo-run 0.11.1's override parser cannot resolve: give
    each such string a parser that parses as the type it names."""
    from nemo_run.cli.cli_parser import type_parser

    classes, seen = [RunConfig], set()
    while classes:
        cls = classes.pop()
        seen.add(cls)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            real = hints[f.name]
            if dataclasses.is_dataclass(real) and real not in seen:
                classes.append(real)
            elif isinstance(f.type, str) and f.type not in type_parser.custom_parsers:
                type_parser.register_parser(f.type)(
                    lambda value, _annotation, real=real: type_parser.parse(value, real))


def _config_factory(run, fn, executor_type):
    """`fn`'s executor as a run.Config, with the real types nemo-run's registry reads from the
    signature (nemo-run files a factory under its return type)."""
    signature = inspect.signature(fn)
    hints = typing.get_type_hints(fn)

    def factory(**kwargs):
        return as_config_tree(fn(**kwargs))

    factory.__name__, factory.__doc__ = fn.__name__, fn.__doc__
    factory.__signature__ = signature.replace(
        parameters=[p.replace(annotation=hints.get(p.name, p.annotation))
                    for p in signature.parameters.values()],
        return_annotation=run.Config[executor_type])
    return factory


def main() -> None:
    """`python -m rlad_megatron.launch`: nemo-run's command line for `rlad_train`."""
    import nemo_run as run

    from rlad_megatron.launch.plan_check import PlanCheck

    _register_cli(run)
    gpu_memory = float(os.environ.get("GPU_MEMORY_GIB", 80))
    run.cli.main(rlad_train, default_factory=qwen3_8b_to_1_7b,
                 default_executor=run.Config(run.LocalExecutor, ntasks_per_node=8,
                                             launcher="torchrun", env_vars=dict(ENV_VARS)),
                 default_plugins=[run.Config(PlanCheck, gpu_memory_gib=gpu_memory)])

