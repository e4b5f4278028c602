"""runtime/inference."""
