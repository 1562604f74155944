"""End-to-end tests: real PACS software (Orthanc, DCMTK, pydicom) on an encfs-pacs mount."""
