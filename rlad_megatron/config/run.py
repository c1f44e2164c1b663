"""The run configuration: dataclasses per section, a YAML file plus dotted key=value overrides
(omegaconf, merged by `merge_config`, the one merge train, recipes, reproduce and nemo-run use),
validated in one place (config/validate.py `validate_run_config`) with errors that name the key.

    rlad train examples/configs/demo.yaml train.steps=20 parallel.tensor=2 loss.trrd.alpha=0.3
    rlad train --help-config        # every field, its type, default, allowed values and doc

Every field has a docstring (tests/unit/config/test_schema.py holds that); a field whose values
come from a registry declares it with `choice(default, REGISTRY)`, so the allowed values are the
registry's keys (config/schema.py checks them). Unknown keys and wrong types are refused by
omegaconf with the full dotted key; semantic checks (sizes that must divide, files that must
exist, options that contradict each other) run before any model is built. The resolved config is
saved with the run (`to_yaml`). The algorithm's sections (advantage, loss.*, selection,
imitation) are in config/algorithms.py, the others in config/sections.py; ParallelConfig
(runtime/parallel.py) and OptimizerSettings (models/build.py) are declared by the components
that own them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from rlad_megatron.losses import Loss
from rlad_megatron.runtime.parallel import ParallelConfig
from rlad_megatron.config.algorithms import (AdvantageConfig, ImitationConfig, LossConfig,
                                             SelectionConfig, choice)
from rlad_megatron.config.sections import (CheckpointConfig, DataConfig, EvalConfig, LoggingConfig,
                                           ModelConfig, OptimConfig, RolloutConfig,
                                           TeacherConfig, TrainConfig)

ALGORITHMS = {"rlad": "trrd", "grpo": "grpo", "kdrl": "kdrl", "sft_distill": "sft", "sft": "sft"}
"""algorithm -> its loss: the loss.<name> section, whose `build` gives the bound loss of that name
(losses/bound.py)."""
RL_ALGORITHMS = ("rlad", "grpo", "kdrl")
"""Algorithms that roll out, reward and update with an RL loss (the rest are supervised)."""
NEEDS_TEACHER = ("rlad", "kdrl", "sft_distill")
"""Algorithms that always load a teacher (any RL algorithm also does with
rollout.teacher_samples)."""
TRAJECTORY_ALGORITHMS = ("rlad", "grpo")
"""Algorithms whose RL loss can be joined with imitation of teacher trajectories."""
REFERENCE_KL_ALGORITHMS = ("rlad", "grpo")
"""Algorithms whose loss takes the reference KL (loss.<name>.kl_beta)."""
@dataclass
class RunConfig:
    """One `rlad train` run."""

    algorithm: str = choice("rlad", ALGORITHMS)
    """rlad (TRRD), grpo, kdrl, sft_distill (SFT on rejection-sampled teacher traces), sft."""
    run_dir: str = "runs/default"
    """Where the run writes config.yaml, metrics, TensorBoard, evaluations and checkpoints."""
    seed: int = 1234
    """Seed of the run: prompt order (with data.seed), rollout and trace sampling, random
    initialisation (teacher: seed + 1), and the model-parallel RNG (it replaces parallel.seed)."""
    student: ModelConfig = field(default_factory=ModelConfig)
    """The student being trained."""
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    """The frozen teacher (algorithms rlad, kdrl, sft_distill, or teacher trajectories)."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Model-parallel layout; DP takes the remaining ranks."""
    data: DataConfig = field(default_factory=DataConfig)
    """Prompts, splits and rewards."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Sampling of the student's (and the teacher's) responses."""
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    """Group-normalised advantages."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Per-loss options; the algorithm picks the section."""
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    """Which loss tokens use the teacher: TRRD's anchor, KDRL's teacher KL."""
    imitation: ImitationConfig = field(default_factory=ImitationConfig)
    """Imitation of teacher trajectories (rollout.teacher_samples > 0)."""
    optimizer: OptimConfig = field(default_factory=OptimConfig)
    """The student's optimizer and LR schedule."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Steps, micro-batches and mini-batches."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Saving and resuming."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Metrics sinks."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation protocol."""

    @property
    def loss_name(self) -> str:
        """The name of the update's loss (loss_for): the algorithm's, or "joint" (RL +
        imitation of teacher trajectories) when rollout.teacher_samples > 0."""
        return "joint" if self.uses_trajectories else ALGORITHMS[self.algorithm]

    @property
    def rl_loss_name(self) -> str:
        """The RL loss on the student's own rows (inside "joint" when it is used)."""
        return ALGORITHMS[self.algorithm]

    @property
    def uses_trajectories(self) -> bool:
        return self.rollout.teacher_samples > 0

    @property
    def is_rl(self) -> bool:
        """Rollouts, rewards and an RL loss (else a supervised path: sft, sft_distill)."""
        return self.algorithm in RL_ALGORITHMS

    @property
    def needs_teacher(self) -> bool:
        return self.algorithm in NEEDS_TEACHER or self.uses_trajectories

    @property
    def kl_beta(self) -> float:
        """The active loss's reference-KL weight (0 when its loss has none)."""
        return getattr(getattr(self.loss, self.rl_loss_name), "kl_beta", 0.0)

    @property
    def checkpoint_dir(self) -> str:
        return self.checkpoint.dir or str(Path(self.run_dir) / "checkpoints")

    def section_of(self, loss: str):
        """The loss.<name> section of a loss name (ALGORITHMS' values)."""
        return getattr(self.loss, loss)

    def loss_for(self, step: int) -> Loss:
        """The update's bound loss at RL step `step` (losses/bound.py): the algorithm's section
        built, and joined with the imitation of teacher trajectories when they are on (its name
        is then loss_name's "joint")."""
        rl = self.section_of(self.rl_loss_name).build(step)
        return self.imitation.build(rl, step) if self.uses_trajectories else rl


def merge_config(*layers, where: str, base: Optional[RunConfig] = None) -> RunConfig:
    """The one merge of run configuration layers: each a mapping (dict or omegaconf node: a YAML
    file's contents, a recipe section) or a list of dotted key=value overrides, merged in order
    over `base` (default: the schema's defaults). Unknown keys, wrong types and malformed
    overrides are a ValueError naming `where` and the dotted key."""
    import copy

    return merge_schema(RunConfig if base is None else copy.deepcopy(base), *layers, where=where)


def merge_schema(schema, *layers, where: str):
    """merge_config for any documented dataclass schema (a class: its defaults, or an instance to
    merge over), e.g. a recipe's `reproduce` and `map` sections (reproduce/spec.py, grid.py):
    the same layers, the same errors naming `where` and the dotted key."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        nodes = [OmegaConf.structured(schema)]
        for layer in layers:
            if isinstance(layer, (list, tuple)):
                bad = [o for o in layer if "=" not in str(o)]
                if bad:
                    raise ValueError(f"{where}: override {bad[0]!r} is not of the form key=value")
                layer = OmegaConf.from_dotlist([str(o) for o in layer])
            nodes.append(layer if layer is not None else {})
        return OmegaConf.to_object(OmegaConf.merge(*nodes))
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise ValueError(f"{where}: {'key ' + key + ': ' if key else ''}{e.msg}") from None


def load_config(path: Optional[str], overrides: List[str] = ()) -> RunConfig:
    """YAML file (optional) + dotted overrides -> RunConfig; errors name the file and key."""
    if path is not None and not Path(path).is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    where = f"{path} with command-line overrides" if path else "command-line overrides"
    return merge_config(load_mapping(path) if path is not None else {}, list(overrides),
                        where=where)


def resolve_run_config(cfg: Optional[RunConfig] = None, config_file: Optional[str] = None,
                       overrides: List[str] = ()) -> RunConfig:
    """Type-checked RunConfig: `cfg` (e.g. built by fiddle from a nemo-run task) or
    `config_file`, then `overrides`."""
    if cfg is None:
        return load_config(config_file, list(overrides))
    from omegaconf import OmegaConf

    return merge_config(OmegaConf.create(to_yaml(cfg)), list(overrides),
                        where="task config with overrides")


def same_config(path: Path, cfg: RunConfig, view=None) -> bool:
    """Whether the config saved at PATH equals CFG, read back through the schema: a field added
    to RunConfig since, at its default, does not make them differ; a key the schema no longer
    has does. `view` (e.g. config/active.py reset_inactive) maps both before comparing."""
    view = view or (lambda c: c)
    try:
        return path.is_file() and view(load_config(str(path))) == view(cfg)
    except ValueError:
        return False


def load_mapping(path: str):
    """The YAML file as an omegaconf mapping; malformed YAML or a top level that is not a mapping
    is a ValueError naming the file."""
    import yaml
    from omegaconf import DictConfig, OmegaConf

    try:
        node = OmegaConf.load(path)
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(node, DictConfig):
        raise ValueError(f"{path}: the top level must be a mapping of config sections, got a "
                         f"{type(node).__name__}")
    return node


def to_yaml(cfg: RunConfig) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
