"""The owner's PKI: root and batch signer CAs, device certificates made the way Microchip makes
them, CRLs, and where the CAs' keys live (an encrypted file or a PKCS#11 token)."""
