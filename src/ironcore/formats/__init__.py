"""Wire formats the device SDK and the server both read and write.

A format lives here when a device and ironcore must agree on it byte for byte: the signed
firmware manifest (`firmware`) and the key rotation messages (`rotation`). These modules are
pure (no I/O, no clock) and import nothing of ironcore but `jose` and `errors`, so the device
SDK (`ironcore.device`) can use them without loading any of the server.
"""
