"""What the batch carries: tokenizers, tasks, rewards, advantages, selective-imitation masks."""
