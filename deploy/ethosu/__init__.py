"""Arm Ethos-U NPUs through Arm's Vela compiler: running Vela (vela.py), the per-layer cost model the
search uses on an Ethos-U device (cost.py), and the pipeline's Ethos-U stages (stage.py). See docs/ethos-u.md."""
