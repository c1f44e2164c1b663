"""The run configuration: one documented schema (RunConfig and its sections), YAML plus
dotted overrides, and the one place it is validated before any model is built.

  run.py         RunConfig (the algorithm and its sections), loading, merging, to_yaml
  sections.py    the models, data, rollout, optimizer, training, checkpoint, logging and eval
  algorithms.py  the algorithm sections: advantage, losses (each builds its bound loss), selection,
                 imitation
  schema.py      walking the schema: field types, choices, docs (`rlad train --help-config`)
  active.py      which options take effect in a run (an ignored one is refused)
  on_policy.py   when the update may reuse its own forward as the old policy
  generation.py  the run's generations (rollout, eval) as the sampler's GenerationConfig
  validate.py    every check, before any model is built
"""
