"""The shipped experiment configs: `--config=neurojax/configs/NAME.py`, or
`--config=NAME` from any directory (also with neurojax installed)."""
