"""The viewer: a static site (`python -m engine.report`) and a live server (`python -m engine.serve`); reads the core only."""
