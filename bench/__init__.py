"""relay's benchmark suite: the relay against a naive baseline, same load client.

`python -m bench` runs the scenarios of issue 6 (fan-out, selective delivery,
idle connections, write cost, catch-up, slow consumers, plus a calibration
floor), prints one table with the targets, and writes JSON, markdown and a
PNG chart to `bench/results/` (git-ignored). `python -m bench --smoke` runs
the same code at tiny sizes in under a minute (CI).

Invariant: what is compared is measured the same way for both systems: the
same rows, tokens and load client, one system at a time, and server CPU
charged to the server process alone (see docs/architecture.md,
"How speed is measured").
"""
