"""Getting studies in: one ingest service behind every door (folder, upload, REST, the
C-STORE listener, the PACS over DICOMweb), the object store checks, and their pages."""
