"""encfs-pacs: a transparent encrypting filesystem for medical-image archives."""

__version__ = "0.1.0"
