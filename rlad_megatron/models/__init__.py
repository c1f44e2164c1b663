"""megatron-core GPT models: presets, TransformerConfig, student and teacher builders, log-prob
passes."""
