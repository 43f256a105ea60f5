"""Pure stream logic: events, features, scaling, the clustering model and segment decisions.

Nothing in this package does I/O; every function takes and returns plain values.
"""
