"""Base policies (scripted experts, the tiny VLA, lerobot adapters) and heads (residual, edit)."""
