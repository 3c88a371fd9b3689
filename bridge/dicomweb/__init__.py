"""DICOMweb side of the bridge: the HTTP client and the multipart/related codec."""
