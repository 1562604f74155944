"""Pure cryptography and on-disk byte layouts: no file system access, no FUSE.

keys          master key, passphrase/keyfile wrapping, HKDF sub-keys
chunks        per-file header and authenticated chunk format
volume_config the volume config document (parse, validate, serialise)
"""
