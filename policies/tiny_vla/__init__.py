"""policies/tiny_vla."""
