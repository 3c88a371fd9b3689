"""Cloud DICOMweb server emulation and the per-profile end-to-end tests (issue 11)."""
