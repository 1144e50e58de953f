"""Recordings of upstream frames: the file format, the recorder, the player.

``python -m alpaca_proxy.recording info|export PATH`` inspects one
(``docs/recording.md`` describes the format).
"""
