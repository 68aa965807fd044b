"""Firmware signing and verification (docs/firmware.md).

`manifest` is the signed manifest format, `signing` signs it with a KeyStore and checks an
image against it; the device side, secure boot with A/B slots, is `ironcore.device.secure_boot`.
"""
