"""Device SDK: secure elements (software, PKCS#11), and what device code builds on them."""
