"""The one training loop and the datasets and class-balanced sampler it draws from."""
