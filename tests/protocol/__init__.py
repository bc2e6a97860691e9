"""Property tests of the sans-IO wire protocol (snakepit_trio_bridge.protocol)."""
