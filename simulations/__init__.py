"""Fault-injection simulations of p2pexec clusters: seeded scenarios over the real node
code, on whole nodes (SimNetwork) or on the sans-IO cores (the stepper). Run them with
`p2pexec simulate` or `python -m simulations`; `simulations.cli` has the details."""
