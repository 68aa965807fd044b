"""The factory: reels of emulated secure elements, their manifests, and manifest import."""
