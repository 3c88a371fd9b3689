"""Integration tests against a real Orthanc, dcmtk and the bridge as a subprocess."""
