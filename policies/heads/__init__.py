"""policies/heads."""
