"""Peer systems for the fan-out benchmark beside nchan: Socket.IO (`socketio_system.py`, its
Node server in `socketio/`) and Pushpin (`pushpin_system.py`, its origin in `grip_origin.py`)."""
