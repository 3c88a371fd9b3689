"""Pure translation between DIMSE identifiers/statuses and DICOMweb requests/answers."""
