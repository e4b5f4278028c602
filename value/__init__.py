"""The learner side: replay store, objectives (critic, heads), training loop, checkpoints, link server."""
