"""Property tests of the sans-IO wire protocol (snakepit_bridge.protocol)."""
