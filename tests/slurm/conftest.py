"""tests/slurm: the project's launchers on a real Slurm cluster started on this machine.

The session fixture `cluster` starts tools/slurm/local_slurm.py's LocalSlurm: two emulated nodes
(n1, n2) of slurm-wlm 22.05 with munge, slurmdbd + MariaDB (a real `sacct`), one fake GPU per
node (a `gpu` GRES, so `--gpus-per-node` jobs schedule) and the pyxis stand-in SPANK plugin
(tools/slurm/pyxis_shim.c: `--container-mounts` become real bind mounts). Every daemon is a child
of the test process and is stopped at the end; state lives in pytest's tmp directory and
SLURM_CONF points the clients at it. A requeued job may start again after 5 s (Slurm's default
is 120 s).

The tests skip only when the Slurm binaries are missing (install them, as root, with
tools/slurm/install_ci.sh); a missing root, compiler, node name in /etc/hosts or nemo-run
fails with the reason.
"""

import os
import shutil
import socket
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SLURM_BINARIES = ("slurmctld", "slurmd", "sbatch", "srun", "scontrol", "sacct", "munged",
                  "slurmdbd", "mariadbd")


def slurm_missing() -> list[str]:
    return [b for b in SLURM_BINARIES if shutil.which(b) is None]


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    missing = slurm_missing()
    if missing:
        pytest.skip(f"Slurm is not installed ({', '.join(missing)} not found); install it with "
                    "tools/slurm/install_ci.sh (Debian, root)")
    if os.geteuid() != 0:
        pytest.fail("the local Slurm cluster needs root (slurmd and the pyxis shim's mounts)")
    try:
        socket.gethostbyname("n1")
    except OSError:
        pytest.fail("the emulated node name n1 does not resolve: tools/slurm/install_ci.sh adds "
                    "'127.0.0.1 n1 n2 n3 n4' to /etc/hosts")
    from local_slurm import LocalSlurm, build_pyxis_shim

    root = tmp_path_factory.mktemp("slurm")
    shim = build_pyxis_shim(root)
    if shim is None:
        pytest.fail("cannot build tools/slurm/pyxis_shim.c: needs gcc and libslurm-dev "
                    "(tools/slurm/install_ci.sh)")
    with LocalSlurm(root / "cluster", nodes=2, accounting=True, spank_plugins=[shim],
                    fake_gpus_per_node=1, requeue_delay_s=5) as c:
        old = os.environ.get("SLURM_CONF")
        os.environ["SLURM_CONF"] = str(c.conf)
        try:
            yield c
        finally:
            if old is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = old


@pytest.fixture(scope="session")
def job_env():
    """The environment a job starts from: the venv's python first on PATH, one thread per rank."""
    venv_bin = os.path.dirname(sys.executable)
    return {**os.environ, "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}",
            "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    from tiny_runs import char_tokenizer

    return char_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture
def tiny_run(tmp_path, tokenizer):
    """(config file, overrides) of a tiny `rlad train` run in tmp_path/run (tests/tiny_runs.py)."""
    from tiny_runs import tiny_overrides

    config = tmp_path / "base.yaml"
    config.write_text("eval:\n  num_prompts: 4\n")

    def make(steps: int, **extra):
        over = tiny_overrides(tokenizer, tmp_path / "run", "rlad", steps=steps)
        return str(config), over + [f"{k}={v}" for k, v in extra.items()]
    return make


@pytest.fixture
def stdin_devnull(monkeypatch):
    """nemo-run shells out through invoke, which reads sys.stdin; pytest's captured stdin raises."""
    with open(os.devnull) as devnull:
        monkeypatch.setattr(sys, "stdin", devnull)
        yield
