"""Talking to a board: the serial protocol client, flashing backends, the MLPerf Tiny measurement modes and a proxy that damages the link on purpose."""
