"""Operators: they translate properties into one call to the runner, the client or the scene layer, and report."""
