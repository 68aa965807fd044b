"""Firmware signing and rollouts (docs/firmware.md).

`signing` signs manifests with a KeyStore and `rollout` stages images to devices. The manifest
format and the rule for what may boot are `ironcore.formats.firmware`, which the device side,
secure boot with A/B slots (`ironcore.device.secure_boot`), reads as well.
"""
