"""The device-facing bridges: how devices reach ironcore over the network."""
