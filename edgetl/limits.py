"""Bounds on user-given numbers, shared by the recipe schema and the CLI (no imports: the CLI loads it at start)."""

# No CPU a model is deployed on has more cores than this; a larger count is a typo that a runtime would only reject
# (or overflow on) minutes into a build.
MAX_THREADS = 1024
