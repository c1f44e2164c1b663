"""A real, throw-away Slurm cluster on this machine, for tests and for trying sbatch scripts.

Debian 12's slurm-wlm 22.05 is built with multiple-slurmd support, so N emulated nodes
(n1, n2, ...) run as N slurmd daemons on localhost, each on its own port. Every daemon (munged,
mariadbd + slurmdbd for `sacct`, slurmctld, the slurmds) runs in the foreground as a child of
this process; `stop()` terminates exactly those PIDs. All state lives under `root`; nothing in
/etc is written except what tools/slurm/install_ci.sh adds (the node names in /etc/hosts).
Clients find the cluster through SLURM_CONF (`cluster.env`).

    with LocalSlurm(root, nodes=2, accounting=True, fake_gpus_per_node=8) as cluster:
        job = cluster.sbatch("job.sbatch")
        info = cluster.wait(job)              # {"JobState": "COMPLETED", "ExitCode": "0:0", ...}

Options that make the cluster production-shaped:
  fake_gpus_per_node  a `gpu` GRES backed by character devices aliasing /dev/null, so that
                      `--gpus-per-node=8` jobs schedule (tasks see CUDA_VISIBLE_DEVICES=0..7)
  spank_plugins       e.g. the pyxis stand-in (pyxis_shim.c): `--container-image/-mounts/-workdir`
  accounting          slurmdbd + MariaDB: a real `sacct` (nemo-run waits on it) with requeues
  requeue_delay_s     how long a requeued job waits before it may start again (Slurm's
                      AuthInfo cred_expire, 120 s by default; tests want a few seconds)

CLI:  python tools/slurm/local_slurm.py up --root DIR [--nodes 2] [--accounting] [--gpus 8]
      python tools/slurm/local_slurm.py down --root DIR
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
            "PREEMPTED", "BOOT_FAIL", "DEADLINE"}
HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_pyxis_shim(out_dir: str | Path) -> str | None:
    """Compile pyxis_shim.c (needs gcc and libslurm-dev's spank.h); None when they are missing."""
    if not (shutil.which("gcc") and Path("/usr/include/slurm/spank.h").exists()):
        return None
    so = Path(out_dir) / "pyxis_shim.so"
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(so), str(HERE / "pyxis_shim.c")],
                   check=True)
    return str(so)


class LocalSlurm:
    def __init__(self, root: str | Path, nodes: int = 2, cpus_per_node: int | None = None,
                 mem_mb: int = 4000, accounting: bool = False, spank_plugins=(),
                 fake_gpus_per_node: int = 0, requeue_delay_s: int = 120, cluster: str = "ci"):
        self.root = Path(root).resolve()
        self.node_names = [f"n{i + 1}" for i in range(nodes)]
        self.cpus = cpus_per_node or os.cpu_count() or 2
        self.mem_mb = mem_mb
        self.accounting = accounting
        self.spank_plugins = list(spank_plugins)
        self.fake_gpus = fake_gpus_per_node
        self.requeue_delay_s = requeue_delay_s
        self.cluster = cluster
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.conf = self.root / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ configuration
    def write_configs(self) -> None:
        r = self.root
        if r.exists():
            shutil.rmtree(r)
        for d in ["state", "log", "munge", "db"] + [f"spool/{n}" for n in self.node_names]:
            (r / d).mkdir(parents=True, exist_ok=True)
        os.chmod(r, 0o755)
        self.ports = dict(ctld=_free_port(), dbd=_free_port(), db=_free_port(),
                          **{n: _free_port() for n in self.node_names})
        munge_socket = r / "munge" / "munge.sock"
        # cred_expire also sets how long a requeued job waits before it may start again
        auth_info = f"AuthInfo=socket={munge_socket},cred_expire={self.requeue_delay_s}\n"
        if self.accounting:
            acct = ("AccountingStorageType=accounting_storage/slurmdbd\n"
                    f"AccountingStorageHost=localhost\nAccountingStoragePort={self.ports['dbd']}\n"
                    "JobAcctGatherType=jobacct_gather/linux\n"
                    # the ctld -> dbd link takes its munge socket from here, not from AuthInfo
                    f"AccountingStoragePass={munge_socket}\n")
        else:
            acct = ("AccountingStorageType=accounting_storage/none\n"
                    "JobAcctGatherType=jobacct_gather/none\n")
        (r / "plugstack.conf").write_text("".join(f"required {p}\n" for p in self.spank_plugins))
        gres = f" Gres=gpu:{self.fake_gpus}" if self.fake_gpus else ""
        gres_conf = ""
        if self.fake_gpus:
            # gres/gpu needs File= character devices (a count-only record drains the node)
            (r / "dev").mkdir()
            for i in range(self.fake_gpus):
                os.mknod(r / "dev" / f"fakegpu{i}", stat.S_IFCHR | 0o666, os.makedev(1, 3))
            gres_conf = f"Name=gpu File={r}/dev/fakegpu[0-{self.fake_gpus - 1}]\n"
        (r / "gres.conf").write_text(gres_conf)          # read from next to $SLURM_CONF
        nodes = ("GresTypes=gpu\n" if self.fake_gpus else "") + "".join(
            f"NodeName={n} NodeHostname=localhost NodeAddr=127.0.0.1 Port={self.ports[n]} "
            f"CPUs={self.cpus} RealMemory={self.mem_mb}{gres} State=UNKNOWN\n"
            for n in self.node_names)
        self.conf.write_text(f"""\
ClusterName={self.cluster}
SlurmctldHost=localhost
SlurmctldPort={self.ports['ctld']}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
{auth_info}MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
{acct}JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmdParameters=config_overrides
MailProg=/bin/true
PlugStackConfig={r}/plugstack.conf
MinJobAge=3600
KillWait=10
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/%n
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd-%n.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
{nodes}PartitionName=debug Nodes={','.join(self.node_names)} Default=YES MaxTime=INFINITE State=UP
""")
        if self.accounting:
            dbd = r / "slurmdbd.conf"                   # read from next to $SLURM_CONF
            dbd.write_text(f"""\
AuthType=auth/munge
{auth_info}DbdHost=localhost
DbdPort={self.ports['dbd']}
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={self.ports['db']}
StorageUser=root
StorageLoc=slurm_acct_db
LogFile={r}/log/slurmdbd.log
PidFile={r}/slurmdbd.pid
""")
            os.chmod(dbd, 0o600)

    # ------------------------------------------------------------------ daemons
    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.stdout", "wb")
        proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append((name, proc))

    def _wait_for(self, what: str, ready, timeout: float = 60.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for name, proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode} while waiting for "
                                       f"{what}; see {self.root}/log")
            if ready():
                return
            time.sleep(0.2)
        raise TimeoutError(f"timed out waiting for {what}; see {self.root}/log")

    def _ok(self, *argv: str) -> bool:
        return subprocess.run(argv, env=self.env, capture_output=True).returncode == 0

    def _port_open(self, port: int) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    def _all_idle(self) -> bool:
        p = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], env=self.env,
                           capture_output=True, text=True)
        states = dict(line.split() for line in p.stdout.splitlines() if line.strip())
        return p.returncode == 0 and all(states.get(n) == "idle" for n in self.node_names)

    def start(self) -> "LocalSlurm":
        t0 = time.time()
        self.write_configs()
        r = self.root
        key = r / "munge" / "munge.key"
        subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True)
        os.chmod(key, 0o600)
        self._spawn("munged", ["munged", "-F", "--force", f"--socket={r}/munge/munge.sock",
                               f"--key-file={key}", f"--pid-file={r}/munge/munged.pid",
                               f"--log-file={r}/log/munged.log",
                               f"--seed-file={r}/munge/munged.seed"])
        self._wait_for("munged", lambda: self._ok("munge", "-n", f"--socket={r}/munge/munge.sock"))
        if self.accounting:
            subprocess.run(["mariadb-install-db", "--no-defaults", "--user=root",
                            f"--datadir={r}/db/data", "--auth-root-authentication-method=normal"],
                           check=True, capture_output=True)
            self._spawn("mariadbd", ["mariadbd", "--no-defaults", "--user=root",
                                     f"--datadir={r}/db/data", f"--socket={r}/db/mysql.sock",
                                     f"--port={self.ports['db']}", "--bind-address=127.0.0.1",
                                     "--skip-log-bin", f"--pid-file={r}/db/mariadb.pid"])
            self._wait_for("mariadbd", lambda: self._ok(
                "mariadb", f"--socket={r}/db/mysql.sock", "-uroot", "-e", "select 1"))
            self._spawn("slurmdbd", ["slurmdbd", "-D"])
            self._wait_for("slurmdbd", lambda: self._port_open(self.ports["dbd"]))
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._wait_for("slurmctld", lambda: self._ok("scontrol", "ping"))
        for n in self.node_names:
            self._spawn(f"slurmd-{n}", ["slurmd", "-D", "-N", n, "-f", str(self.conf)])
        self._wait_for("idle nodes", self._all_idle)
        if self.accounting:
            self._wait_for("sacct", lambda: self._ok("sacct", "-n"))
        self.timings["start_s"] = round(time.time() - t0, 2)
        return self

    def stop(self) -> None:
        """SIGTERM every daemon this object started, newest first, and wait for it."""
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()

    def __enter__(self) -> "LocalSlurm":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ jobs
    def run(self, *argv: str, check: bool = True) -> str:
        """A Slurm client command against this cluster; its stdout."""
        p = subprocess.run(argv, env=self.env, capture_output=True, text=True)
        if check and p.returncode:
            raise RuntimeError(f"{' '.join(argv)} exited {p.returncode}: {p.stderr.strip()}")
        return p.stdout

    def sbatch(self, script: str | Path, *script_args: str, options=(),
               env: dict | None = None) -> str:
        """sbatch [options] script [script_args]; returns the job id. `env` replaces the
        submission environment (SLURM_CONF is added)."""
        p = subprocess.run(["sbatch", "--parsable", *options, str(script), *script_args],
                           env={**(env or self.env), "SLURM_CONF": str(self.conf)},
                           capture_output=True, text=True)
        if p.returncode:
            raise RuntimeError(f"sbatch {script} failed ({p.returncode}): {p.stderr.strip()}")
        return p.stdout.strip().split(";")[0]

    def job_info(self, job_id: str) -> dict:
        out = self.run("scontrol", "show", "job", "-o", job_id, check=False)
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait(self, job_id: str, until=lambda info: info.get("JobState") in TERMINAL,
             timeout: float = 300, poll_s: float = 0.3) -> dict:
        """Poll `scontrol show job` until `until(info)`; scancel and raise on timeout."""
        deadline = time.time() + timeout
        while True:
            info = self.job_info(job_id)
            if until(info):
                return info
            if time.time() > deadline:
                self.run("scancel", job_id, check=False)
                raise TimeoutError(f"job {job_id}: condition not reached in {timeout} s "
                                   f"(state {info.get('JobState')}, reason {info.get('Reason')})")
            time.sleep(poll_s)

    def sacct(self, job_id: str, fields: str = "JobID,State,ExitCode,Start,End",
              settle_s: float = 60.0) -> list[dict]:
        """Every accounting record of a job (-D: one per run, so requeues show), as dicts.
        slurmctld sends a job's end to slurmdbd after the fact, so `scontrol` can show a job
        COMPLETED while its last record still reads RUNNING: wait up to settle_s for the last
        record to leave the live states."""
        keys = fields.split(",")
        deadline = time.time() + settle_s
        while True:
            out = self.run("sacct", "-D", "-X", "-n", "-P", "-j", job_id, f"--format={fields}")
            records = [dict(zip(keys, line.split("|"))) for line in out.splitlines()
                       if line.strip()]
            live = records and records[-1].get("State") in _LIVE_STATES
            if not live or time.time() > deadline:
                return records
            time.sleep(0.5)


_LIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "SUSPENDED", "COMPLETING"}
"""Accounting states of a job that has not ended (its record is still to be updated)."""


def _main() -> None:
    ap = argparse.ArgumentParser(description="start or stop a local Slurm cluster")
    ap.add_argument("cmd", choices=["up", "down"])
    ap.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "rlad-slurm"))
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--cpus-per-node", type=int, default=None)
    ap.add_argument("--gpus", type=int, default=0, help="fake GPUs per node (gpu GRES)")
    ap.add_argument("--accounting", action="store_true", help="slurmdbd + MariaDB (sacct)")
    ap.add_argument("--pyxis-shim", action="store_true", help="build and load pyxis_shim.c")
    ap.add_argument("--requeue-delay", type=int, default=120)
    a = ap.parse_args()
    root = Path(a.root)
    if a.cmd == "down":
        os.kill(int((root / "supervisor.pid").read_text()), signal.SIGTERM)
        return
    plugins = []
    if a.pyxis_shim:
        shim_dir = Path(tempfile.mkdtemp(prefix="pyxis-shim-"))
        plugins = [build_pyxis_shim(shim_dir)]
    cluster = LocalSlurm(root, nodes=a.nodes, cpus_per_node=a.cpus_per_node,
                         accounting=a.accounting, spank_plugins=plugins,
                         fake_gpus_per_node=a.gpus, requeue_delay_s=a.requeue_delay)
    cluster.start()
    (root / "supervisor.pid").write_text(str(os.getpid()))
    print(json.dumps({"SLURM_CONF": str(cluster.conf), **cluster.timings}), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: (cluster.stop(), sys.exit(0)))
    while True:          # the supervisor owns the daemons; `down` sends it SIGTERM
        time.sleep(3600)


if __name__ == "__main__":
    _main()
