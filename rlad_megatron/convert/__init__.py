"""Hugging Face <-> Megatron distributed checkpoint conversion (docs/conversion.md).

  keymaps.py        the one HF <-> megatron map: names, shapes, fusions, per-rank windows, inverse
  layout.py         HF tensors (windows or full) -> this rank's megatron chunks, through the map
  hf_config.py      config.json <-> ModelSpec
  hf_reader.py      an HF directory read lazily (safetensors windows, index, checks)
  dist_reader.py    boxes of global tensors of a torch_dist checkpoint, in one process
  hf_to_megatron.py `rlad convert import`: each rank fills and saves its own shard
  megatron_to_hf.py `rlad convert export`: tensor by tensor into safetensors files
  inspect_ckpt.py   `rlad convert inspect`
  score.py          `rlad logprobs`
  commands.py       the argparse wiring of those commands
  init_weights.py   deterministic random HF-layout weights, from the map
"""
