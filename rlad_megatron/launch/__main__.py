"""python -m rlad_megatron.launch --factory RECIPE [cfg.KEY=VALUE ...] [run.executor=slurm|local
[run.executor.KEY=VALUE ...]] [--dryrun] [--yes]: see launch/nemo_run.py."""

from rlad_megatron.launch.nemo_run import main

if __name__ == "__main__":
    main()
