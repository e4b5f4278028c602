"""runtime/links."""
