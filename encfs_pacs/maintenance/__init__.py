"""Maintenance of a volume without mounting it: import, export, fsck, passwd, recovery keys.

Works on the store API (``encfs_pacs.store``) and the file format (``encfs_pacs.crypto``)
directly, like the FUSE layer does, and never imports FUSE; the CLI in
``encfs_pacs.cli.maintenance`` adds options, prompts and progress bars.

events     make_event()/audit_event(): each command's event, queued for the volume's audit trail
locking    one maintenance command at a time per volume
progress   the progress interface the CLI draws (files, bytes, rate, ETA)
codec      whole-file streaming encryption, authentication and decryption on descriptors
tree       walking a folder, copying metadata (mode, owner, times)
rekey      passwd (rewrap the master key) and recovery keys
importer   plaintext folder -> volume, resumable, verified
exporter   volume -> plaintext folder
fsck       read every chunk of every file; report damage and leftovers
"""
