"""The FUSE adapter. The only package that imports the FUSE binding (see _binding)."""
